"""Time of each clustering method as n grows (1k, 10k, 100k points of 10 Gaussian blobs in 32-d),
with what the O(n^2) guard says where it refuses, and a log-log plot.
    python -m eval.bench_cluster_scaling [--sizes 1000,10000,100000] [--figure eval/figures/cluster_scaling.png]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from eval.results_md import emit, parse_or_render, table_section
from ssl_rep.eval import CLUSTER_METHODS, ClusteringTooLargeError, cluster, clustering_scores


def blobs(n: int, dim: int = 32, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim)) * 3
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--methods", default=",".join(CLUSTER_METHODS))
    parser.add_argument("--max-memory-gb", type=float, default=4.0)
    parser.add_argument("--figure", default=str(Path(__file__).parent / "figures" / "cluster_scaling.png"))
    args = parse_or_render(parser, render)
    if args is None:
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        X, y = blobs(n)
        for method in args.methods.split(","):
            start = time.perf_counter()
            try:
                pred = cluster(X, method, n_clusters=10, max_memory_gb=args.max_memory_gb)
                row = {"n": n, "method": method, "seconds": time.perf_counter() - start,
                       "acc": clustering_scores(y, pred)["acc"]}
            except ClusteringTooLargeError as exc:
                row = {"n": n, "method": method, "refused": str(exc).split(". Options")[0]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    plot(rows, Path(args.figure))
    emit(rows, args, render)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        done = [(r["n"], r["seconds"]) for r in rows if r["method"] == method and "seconds" in r]
        refused = [r["n"] for r in rows if r["method"] == method and "refused" in r]
        line, = ax.plot(*zip(*done), marker="o", label=method) if done else (None,)
        for n in refused:
            ax.annotate("guard", (n, done[-1][1] if done else 1), color=line.get_color() if line else "k",
                        fontsize=8, xytext=(0, 6), textcoords="offset points", ha="center")
            ax.scatter([n], [done[-1][1] if done else 1], marker="x", color=line.get_color() if line else "k")
    ax.set(xscale="log", yscale="log", xlabel="points (32-d)", ylabel="seconds (2 CPU cores)",
           title="clustering time vs n (x: refused by the memory guard)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def render(rows: list[dict], command: str | None, machine_name: str | None = None) -> None:
    lines = [f"| {r['method']} | {r['n']:,} | " + (f"{r['seconds']:.2f} s | {r['acc']:.3f} |" if "seconds" in r
                                                    else f"refused | {r['refused']} |") for r in rows]
    table_section("bench-cluster-scaling", "Clustering time as n grows", "python -m eval.bench_cluster_scaling",
                  ["method", "n", "time", "ACC on 10 blobs (or the guard's message)"], lines, command, machine_name,
                  note="![clustering time vs n](figures/cluster_scaling.png)\n\nThe O(n^2) methods (mean-shift, "
                       "DBSCAN, agglomerative) are refused above the memory limit (`max_memory_gb`, 4 GB by default) "
                       "with the estimate and the ways out (`--max-samples`, a connectivity graph, k-means); k-means "
                       "(faiss) and GMM run at every size. The 1k k-means time includes faiss's first-call start-up.")


if __name__ == "__main__":
    main()
