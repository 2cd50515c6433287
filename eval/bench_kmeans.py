"""k-means: faiss (seeded with k-means++, as ssl_rep.eval.cluster runs it) vs scikit-learn's KMeans,
same data, same number of Lloyd iterations, one run side by side. Goal: >= 10x faster at inertia
within 1%. Usage:
    python eval/bench_kmeans.py [--n 100000 --d 512 --k 100 --iters 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.results_md import update_section  # noqa: E402
from ssl_rep.eval.cluster import kmeans  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-results-md", action="store_true")
    args = parser.parse_args()
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=args.n, n_features=args.d, centers=args.k, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)
    start = time.perf_counter()
    kmeans(X, args.k, n_init=1, n_iter=args.iters, seed=0)
    t_faiss, inertia_faiss = time.perf_counter() - start, kmeans.last_inertia
    start = time.perf_counter()
    ref = KMeans(args.k, n_init=1, max_iter=args.iters, tol=0.0, random_state=0, algorithm="lloyd").fit(X)
    t_sk = time.perf_counter() - start
    row = {"n": args.n, "d": args.d, "k": args.k, "iters": args.iters, "faiss_s": t_faiss, "sklearn_s": t_sk,
           "speedup": t_sk / t_faiss, "inertia_ratio": inertia_faiss / ref.inertia_}
    print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2))
    if not args.no_results_md:
        body = (f"| n x d, k, iterations | faiss (k-means++ seeded) | scikit-learn KMeans | speed-up (goal >= 10x) | "
                f"inertia ratio faiss/sklearn (goal <= 1.01) |\n|---|---|---|---|---|\n"
                f"| {args.n} x {args.d}, {args.k}, {args.iters} | {t_faiss:.1f} s | {t_sk:.1f} s | "
                f"{row['speedup']:.2f}x | {row['inertia_ratio']:.4f} |")
        update_section("bench-kmeans", "k-means: faiss vs scikit-learn", " ".join(["python", *sys.argv]), body)


if __name__ == "__main__":
    main()
