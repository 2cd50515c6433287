"""LinearProbe vs scikit-learn's LogisticRegression, and faiss kNN vs KNeighborsClassifier, on the
same frozen features (side by side, one run). Goal: probe >= 5x faster at accuracy within 0.5 pt.

    python -m eval.bench_probe --checkpoint CKPT --data fashion-mnist [--root DIR]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from eval.results_md import add_encoder_args, emit, parse_or_render, update_section
from ssl_rep.eval import eval_dataset, resolve_encoder
from ssl_rep.eval import KNNClassifier, LinearProbe, extract_features


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    add_encoder_args(parser, "the encoder whose features both fit", "the same fixed C for both (no search)")
    args = parse_or_render(parser, render, required=("checkpoint",))
    if args is None:
        return
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    enc = resolve_encoder(args.checkpoint)
    X, y = extract_features(enc, eval_dataset(args.data, "train", args.root, None), progress=False)
    Xt, yt = extract_features(enc, eval_dataset(args.data, "test", args.root, None), progress=False)
    X, Xt = np.asarray(X), np.asarray(Xt)
    LinearProbe(C=args.C).fit(X[:512], y[:512])  # warm-up (CUDA context, kernels)
    ours, t_ours = timed(lambda: LinearProbe(C=args.C).fit(X, y))
    scaler = StandardScaler().fit(X)
    ref, t_ref = timed(lambda: LogisticRegression(C=args.C, max_iter=1000).fit(scaler.transform(X), y))
    acc_ours, acc_ref = ours.score(Xt, yt), ref.score(scaler.transform(Xt), yt)
    Xs = scaler.transform(X)
    knn, t_knn = timed(lambda: KNNClassifier(k=20).fit(X, y).predict(Xt))
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Xtn = Xt / np.linalg.norm(Xt, axis=1, keepdims=True)
    sk_knn, t_sk_knn = timed(lambda: KNeighborsClassifier(20, metric="cosine", algorithm="brute").fit(Xn, y).predict(Xtn))
    row = {"n_train": len(X), "dim": X.shape[1], "probe_s": t_ours, "sklearn_logreg_s": t_ref,
           "probe_speedup": t_ref / t_ours, "probe_acc": acc_ours, "sklearn_acc": acc_ref,
           "acc_diff_pt": 100 * (acc_ours - acc_ref), "knn_s": t_knn, "sklearn_knn_s": t_sk_knn,
           "knn_speedup": t_sk_knn / t_knn, "knn_acc": float((knn == yt).mean()),
           "sklearn_knn_acc": float((sk_knn == yt).mean()),
           # both standardise by the training features' mean and (population) std, so one Xs serves both
           "probe_objective": objective(Xs, y, ours.coef_, ours.intercept_, args.C),
           "sklearn_objective": objective(Xs, y, ref.coef_, ref.intercept_, args.C),
           "device": "cuda" if torch.cuda.is_available() else "cpu"}
    print(json.dumps(row, indent=1))
    emit(row, args, render)


def objective(X, y, coef, intercept, C: float) -> float:
    """scikit-learn's LogisticRegression objective divided by C * n: mean cross-entropy + |W|^2 / (2 C n)."""
    from scipy.special import logsumexp
    logits = X.astype(np.float64) @ np.asarray(coef, np.float64).T + intercept
    y_idx = np.unique(y, return_inverse=True)[1]
    ce = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(X)), y_idx])
    return float(ce + np.sum(np.square(coef, dtype=np.float64)) / (2 * C * len(X)))


def render(row: dict, command: str, machine_name: str | None = None) -> None:
    body = (f"| | ours | scikit-learn | speed-up | accuracy (ours / sklearn) |\n|---|---|---|---|---|\n"
            f"| linear probe (C fixed) | {row['probe_s']:.2f} s | {row['sklearn_logreg_s']:.2f} s | "
            f"{row['probe_speedup']:.1f}x | {row['probe_acc']:.4f} / {row['sklearn_acc']:.4f} |\n"
            f"| kNN k=20 | {row['knn_s']:.2f} s | {row['sklearn_knn_s']:.2f} s | {row['knn_speedup']:.1f}x | "
            f"{row['knn_acc']:.4f} / {row['sklearn_knn_acc']:.4f} |\n\n"
            f"{row['n_train']} training features of dimension {row['dim']}.")
    if "probe_objective" in row:
        met = row["probe_speedup"] >= 5 and abs(row["acc_diff_pt"]) <= 0.5
        body += (" Both on the same CPU cores." if row["device"] == "cpu" else
                 " Ours on the GPU, scikit-learn (and faiss's kNN) on the host's CPU cores.")
        body += (f" Objective (mean cross-entropy + |W|^2 / (2Cn), on the same standardised features) at each solution: "
                 f"ours {row['probe_objective']:.6f}, scikit-learn {row['sklearn_objective']:.6f}. "
                 f"Goal (probe >= 5x faster at accuracy within 0.5 pt): **{'met' if met else 'not met'}**.")
    key = "bench-probe" if row.get("device", "cuda") == "cuda" else "bench-probe-cpu"
    where = "" if key == "bench-probe" else " (cpu)"
    update_section(key, f"Linear probe and kNN vs scikit-learn{where}", command, body, machine_name=machine_name)


if __name__ == "__main__":
    main()
