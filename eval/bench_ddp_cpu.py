"""Throughput of 1 vs N processes (torchrun, gloo) on the CPU cores of one machine, same global batch.
    python -m eval.bench_ddp_cpu [--procs 1,2] [--steps 30] [--recipe simclr_digits]
Each run gets cores / processes threads; images/s is read from metrics.jsonl after the first 5 steps.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from eval.results_md import emit, parse_or_render, table_section


def run(procs: int, steps: int, recipe: str, global_batch: int) -> dict:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // procs)), "TQDM_DISABLE": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               "-m", "ssl_rep.cli.pretrain", recipe, f"out_dir={tmp}", "trainer.device=cpu", "encoder.norm=group",
               "method.head_batchnorm=false", f"data.batch_size={global_batch // procs}", f"trainer.max_steps={steps}",
               "trainer.log_every=5", "data.num_workers=0", "trainer.online_probe=false"]
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        lines = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    timed = [r for r in lines if r["step"] > 5]
    seconds = timed[-1]["elapsed"] - lines[[r["step"] for r in lines].index(5)]["elapsed"]
    return {"procs": procs, "threads_each": max(1, cores // procs), "global_batch": global_batch,
            "images_per_s": (timed[-1]["step"] - 5) * global_batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--recipe", default="simclr_digits")
    parser.add_argument("--global-batch", type=int, default=128)
    args = parse_or_render(parser, render)
    if args is None:
        return
    rows = [run(int(p), args.steps, args.recipe, args.global_batch) for p in args.procs.split(",")]
    for r in rows:
        r["scaling"] = r["images_per_s"] / rows[0]["images_per_s"]
        print(json.dumps(r), flush=True)
    emit(rows, args, render)


def render(rows: list[dict], command: str | None, machine_name: str | None = None) -> None:
    table_section("bench-ddp-cpu", "Processes vs throughput on one CPU machine (torchrun, gloo)",
                  "python -m eval.bench_ddp_cpu", ["processes", "threads each", "global batch", "images/s",
                                                   "vs 1 process"],
                  [f"| {r['procs']} | {r['threads_each']} | {r['global_batch']} | {r['images_per_s']:.0f} | "
                   f"{r['scaling']:.2f}x |" for r in rows], command, machine_name,
                  note="SimCLR ResNet-20 (GroupNorm) on digits, global negatives gathered across processes. The "
                       "cores are shared, so this measures the cost of the process split and the gradient "
                       "all-reduce, not a speed-up: on one machine the gain comes from GPUs, one per process.")


if __name__ == "__main__":
    main()
