"""Peak memory of the linear probe and k-means on ImageNet-size features streamed from an fp16 memmap.

Writes N x D synthetic features (class-conditional Gaussians, fp16, on disk), then in a fresh child
process each: LinearProbe (fixed C, streamed mini-batch solver) and k-means (fit on a subsample,
every point assigned in chunks). Reports peak anonymous memory (what the process allocated: a full
float32 copy would show here) and peak RSS (which also counts memory-mapped file pages the kernel
can drop). Goal: fits a 24 GiB machine with no full copy in RAM.
    python -m eval.bench_memory [--n 1281167] [--dim 2048] [--classes 100] [--dir /tmp/feats] [--keep]
The 5 GiB feature file is deleted at the end unless --keep (then a rerun with the same shape reuses it).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from eval.results_md import emit, parse_or_render, update_section
from ssl_rep.eval.probe import chunk_rows


def write_features(folder: Path, n: int, dim: int, classes: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "done.json").exists() and json.loads((folder / "done.json").read_text()) == [n, dim, classes]:
        return
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)).astype(np.float32) * 0.5
    X = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float16, shape=(n, dim))
    y = rng.integers(0, classes, n)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        X[start:stop] = centers[y[start:stop]] + rng.standard_normal((stop - start, dim), dtype=np.float32)
    X.flush()
    del X
    np.save(folder / "labels.npy", y)
    (folder / "done.json").write_text(json.dumps([n, dim, classes]))


def _memory_mib() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["RssAnon"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


def child(task: str, folder: Path, classes: int) -> None:
    """Runs in its own process; prints one JSON line with the peaks and the result."""
    peaks = {"anon": 0.0, "rss": 0.0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            anon, rss = _memory_mib()
            peaks["anon"], peaks["rss"] = max(peaks["anon"], anon), max(peaks["rss"], rss)
            time.sleep(0.1)

    threading.Thread(target=sample, daemon=True).start()
    X = np.load(folder / "features.npy", mmap_mode="r")
    y = np.load(folder / "labels.npy")
    start = time.perf_counter()
    if task == "probe":
        from ssl_rep.eval import LinearProbe
        probe = LinearProbe(C=1.0, device="cpu", epochs=1, batch_size=4096).fit(X, y)
        result = {"train_top1_first_100k": probe.score(X[:100_000], y[:100_000])}
    elif task == "probe_c_search":
        # the default path (C chosen on a held-out 20%, then the refit on all), with 2 of the 7 default Cs and 1
        # epoch instead of 30: memory does not grow with either, and 7 x 30 passes take hours on 2 cores
        from ssl_rep.eval import LinearProbe
        passes = time.perf_counter()
        probe = LinearProbe(Cs=(0.1, 1.0), device="cpu", epochs=1, batch_size=4096).fit(X, y)
        result = {"train_top1_first_100k": probe.score(X[:100_000], y[:100_000]), "C": probe.C_,
                  "seconds_per_epoch": (time.perf_counter() - passes) / (2 * 0.8 + 1)}
    else:
        from ssl_rep.eval import cluster, clustering_scores
        labels = cluster(X, "kmeans", n_clusters=classes, max_samples=256 * classes)
        result = {"kmeans_acc": clustering_scores(y, labels)["acc"]}
    stop.set()
    anon, rss = _memory_mib()
    print(json.dumps({"task": task, "seconds": time.perf_counter() - start, "peak_anon_mib": max(peaks["anon"], anon),
                      "peak_rss_mib": max(peaks["rss"], rss), **result}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dir", default="/tmp/ssl_rep_memory_bench")
    parser.add_argument("--keep", action="store_true", help="keep the feature file in --dir for the next run")
    parser.add_argument("--tasks", default="probe,probe_c_search,kmeans")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parse_or_render(parser, render)
    if args is None:
        return
    folder = Path(args.dir)
    if args.child:
        return child(args.child, folder, args.classes)
    start = time.perf_counter()
    write_features(folder, args.n, args.dim, args.classes)
    result = {"n": args.n, "dim": args.dim, "classes": args.classes, "write_seconds": time.perf_counter() - start,
              "file_gib": (folder / "features.npy").stat().st_size / 2**30,
              "full_float32_gib": args.n * args.dim * 4 / 2**30, "tasks": []}
    try:
        for task in args.tasks.split(","):
            out = subprocess.run([sys.executable, "-m", "eval.bench_memory", "--child", task, "--dir", str(folder),
                                  "--classes", str(args.classes)], capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1])
            result["tasks"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(result["tasks"][-1]), flush=True)
    finally:
        if not args.keep:  # several GiB on a disk that CI and other work share
            shutil.rmtree(folder, ignore_errors=True)
    emit(result, args, render)


def render(r: dict, command: str | None, machine_name: str | None = None) -> None:
    rows = ["| task | time | peak anonymous memory | peak RSS (incl. mapped file pages) | result |",
            "|---|---|---|---|---|"]
    for t in r["tasks"]:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in t.items() if k not in ("task", "seconds", "peak_anon_mib",
                                                                              "peak_rss_mib"))
        rows.append(f"| {t['task']} | {t['seconds']:.0f} s | {t['peak_anon_mib'] / 1024:.2f} GiB | "
                    f"{t['peak_rss_mib'] / 1024:.2f} GiB | {shown} |")
    text = "\n".join(rows) + (
        f"\n\n{r['n']:,} x {r['dim']} fp16 features ({r['file_gib']:.1f} GiB on disk; {r['full_float32_gib']:.1f} GiB "
        f"as one float32 array), {r['classes']} classes. Probe: fixed C, one epoch of the streamed mini-batch solver "
        f"(chunks of {chunk_rows(r['dim']):,} rows, 256 MB as float32). probe_c_search: the default path, C chosen on a "
        "held-out 20% of the rows (streamed from the memmap, never copied), then the refit on all of them, with 2 "
        "Cs and 1 epoch (memory does not depend on either; seconds_per_epoch is one pass over all the rows). "
        f"k-means: k-means++ seeding and faiss Lloyd on a {256 * r['classes']:,}-point subsample, then every point "
        "assigned to its nearest centroid in chunks of 65,536. Peak anonymous memory is what the process itself "
        "allocated; RSS also counts pages of the memory-mapped file, which the kernel drops under pressure."
        + (f" {r['note']}" if r.get("note") else ""))
    update_section("bench-memory", "Memory: probe and k-means on features streamed from an fp16 memmap",
                   command or "python -m eval.bench_memory", text, machine_name=machine_name)


if __name__ == "__main__":
    main()
