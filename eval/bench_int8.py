"""Int8 vs float: a pretrained encoder's linear-probe and k-means accuracy, CPU extraction
throughput, and feature-store size, in one run. Goals: accuracy drop <= 0.5 pt, throughput >= 2x.
    python eval/bench_int8.py --checkpoint runs/fashion-mnist-cpu-subset/simclr/encoder.pt \\
        --data fashion-mnist [--root DIR] [--train-subset 10000]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from eval.results_md import add_encoder_args, emit, parse_or_render, update_section
from ssl_rep.eval import eval_dataset, fixed_subset, resolve_encoder
from ssl_rep.eval import LinearProbe, cluster, clustering_scores, extract_features
from ssl_rep.quantize import quantize_encoder, quantize_features


def timed_features(encoder, dataset, batch_size: int):
    start = time.perf_counter()
    X, y = extract_features(encoder, dataset, batch_size=batch_size, device="cpu", progress=False)
    return np.asarray(X), y, len(dataset) / (time.perf_counter() - start)


def scores(X, y, Xt, yt, C: float, seed: int = 0) -> dict:
    probe = LinearProbe(C=C, device="cpu", random_state=seed).fit(X, y)
    pred = cluster(Xt, "kmeans", n_clusters=len(np.unique(yt)), seed=seed)
    k = clustering_scores(yt, pred)
    return {"top1": probe.score(Xt, yt), "kmeans_acc": k["acc"], "kmeans_nmi": k["nmi"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    add_encoder_args(parser, "encoder.pt or checkpoints/last.pt", "the same fixed C for every row")
    parser.add_argument("--train-subset", type=int, default=10_000, help="probe training images (fixed subset)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parse_or_render(parser, render, required=("checkpoint",))
    if args is None:
        return
    encoder = resolve_encoder(args.checkpoint)
    train = fixed_subset(eval_dataset(args.data, "train", args.root, None), args.train_subset, 0)
    test = eval_dataset(args.data, "test", args.root, None)
    X, y, _ = timed_features(encoder, train, args.batch_size)
    Xt, yt, float_rate = timed_features(encoder, test, args.batch_size)
    start = time.perf_counter()
    q = quantize_encoder(encoder, fixed_subset(eval_dataset(args.data, "train", args.root, None), 512, 1))
    quantize_s = time.perf_counter() - start
    Xq, _, _ = timed_features(q, train, args.batch_size)
    Xtq, _, int8_rate = timed_features(q, test, args.batch_size)
    store, store_t = quantize_features(X), quantize_features(Xt)
    result = {"checkpoint": args.checkpoint, "data": args.data, "n_train": len(X), "n_test": len(Xt), "dim": X.shape[1],
              "threads": torch.get_num_threads(), "C": args.C, "quantize_seconds": quantize_s,
              "float": scores(X, y, Xt, yt, args.C), "int8_encoder": scores(Xq, y, Xtq, yt, args.C),
              "int8_store": scores(store, y, np.asarray(store_t), yt, args.C),
              "float_img_s": float_rate, "int8_img_s": int8_rate, "throughput_ratio": int8_rate / float_rate,
              "feature_corr": float(np.corrcoef(Xt.ravel(), Xtq.ravel())[0, 1]),
              "store_bytes": {"fp32": int(X.nbytes), "fp16": int(X.nbytes // 2), "int8": store.stored_bytes}}
    print(json.dumps(result, indent=1))
    emit(result, args, render)


def render(r: dict, command: str | None, machine_name: str | None = None) -> None:
    f = r["float"]
    rows = ["| features from | linear top-1 | change (goal >= -0.5 pt) | k-means ACC | change | k-means NMI |",
            "|---|---|---|---|---|---|"]
    for key, label in (("float", "float32 encoder"), ("int8_encoder", "int8 encoder (PTQ, 512 calibration images)"),
                       ("int8_store", "float32 encoder, int8 feature store")):
        s = r[key]
        rows.append(f"| {label} | {s['top1']:.4f} | {100 * (s['top1'] - f['top1']):+.2f} pt | {s['kmeans_acc']:.4f} | "
                    f"{100 * (s['kmeans_acc'] - f['kmeans_acc']):+.2f} pt | {s['kmeans_nmi']:.4f} |")
    b = r["store_bytes"]
    text = "\n".join(rows) + (
        f"\n\nCPU extraction ({r['threads']} threads, {r['n_test']} test images): float {r['float_img_s']:,.0f} img/s, "
        f"int8 {r['int8_img_s']:,.0f} img/s: **{r['throughput_ratio']:.2f}x** (goal >= 2x). Features of the int8 "
        f"encoder correlate {r['feature_corr']:.4f} with the float ones. Feature store for {r['n_train']} x {r['dim']}: "
        f"fp32 {b['fp32'] / 2**20:.2f} MiB, fp16 {b['fp16'] / 2**20:.2f} MiB, int8 {b['int8'] / 2**20:.2f} MiB "
        f"(**{b['fp32'] / b['int8']:.2f}x** smaller than fp32; 1.28M x 2048 would take {1.28e6 * 2048 / 2**30:.1f} GiB "
        f"as int8 vs {1.28e6 * 2048 * 4 / 2**30:.1f} GiB as fp32). Probe: fixed C={r['C']}, fit on {r['n_train']} "
        f"training images; k-means on the {r['n_test']} test images. Quantizing took {r['quantize_seconds']:.1f} s.")
    update_section(f"bench-int8-{r['data']}", f"Int8 encoder and feature store ({r['data']})",
                   command or "python eval/bench_int8.py", text, machine_name=machine_name)


if __name__ == "__main__":
    main()
