"""Where the training loop's extra time per step goes: torch.profiler over the real loop and the bare step.

bench_step_overhead.py gives the ratio; this script says what is behind it. It profiles ``--steps`` steps
of each, after ``--warmup`` steps, and writes per step: the host's wall time (ProfilerStep), the number of
ops and kernel launches, the device's busy time, and the ops with the most host time, for both, side by
side in one text file. Usage:
    python -m eval.profile_step --method autoencoder --data fashion-mnist --root $FM --device cuda --out DIR
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.profiler import ProfilerActivity, profile, schedule

from eval.bench_step_overhead import RECIPES, bare_step, overhead_config, sync
from ssl_rep.train import train

PROBE_PARAMS = 2   # the online probe's optimiser holds the head's weight and bias only


def summary(prof, steps: int, label: str, rows: int) -> str:
    events = prof.key_averages()
    wall = sum(e.cpu_time_total for e in events if e.key.startswith("ProfilerStep")) / steps / 1e3
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / steps
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                         "cudaMemcpyAsync")) / steps
    # kernels and copies only: an op's row also carries its kernels' device time, which would count them twice
    device_ms = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA) / steps / 1e3
    head = (f"== {label}: host wall {wall:.2f} ms/step, {ops:.0f} aten ops/step, {launches:.0f} launches+copies/step, "
            f"device busy {device_ms:.2f} ms/step ({len(events)} distinct events)")
    return head + "\n" + events.table(sort_by="self_cpu_time_total", row_limit=rows) + "\n"


def difference(loop, bare, steps: int, rows: int) -> str:
    """The events whose calls per step or host time per step differ most between the loop and the bare step."""
    a = {e.key: e for e in loop.key_averages()}
    b = {e.key: e for e in bare.key_averages()}
    diffs = []
    for key in a.keys() | b.keys():
        if key.startswith("ProfilerStep"):
            continue
        ea, eb = a.get(key), b.get(key)
        calls = ((ea.count if ea else 0) - (eb.count if eb else 0)) / steps
        host_us = ((ea.self_cpu_time_total if ea else 0) - (eb.self_cpu_time_total if eb else 0)) / steps
        diffs.append((host_us, calls, key))
    diffs.sort(reverse=True)
    lines = [f"== loop minus bare, per step (top {rows} by extra self host time)",
             f"{'extra host us':>14} {'extra calls':>12}  event"]
    lines += [f"{h:14.1f} {c:12.1f}  {k}" for h, c, k in diffs[:rows]]
    return "\n".join(lines) + "\n"


def profiled(fn, warmup: int, steps: int):
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(activities=activities, schedule=schedule(wait=max(warmup - 1, 0), warmup=1, active=steps, repeat=1))
    with prof:
        fn(prof)
    return prof


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", default="autoencoder", choices=sorted(RECIPES))
    parser.add_argument("--data", default="digits")
    parser.add_argument("--root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--out", default=".", help="folder for profile_METHOD.txt")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        # a run of warmup + steps and a margin (the profiler's window must close inside the run), rounded up to
        # a multiple of 60, which the recipes' logging cadences (5 or 10 steps) divide
        cfg = overhead_config(args.method, args.data, device, tmp, 0, -(-(args.warmup + args.steps + 5) // 60) * 60,
                              args.root)

        def bare(prof):
            step = bare_step(cfg, device)
            for _ in range(args.warmup + args.steps):
                step()
                prof.step()
            sync(device)

        def loop(prof):
            # one profiler step per optimiser step of the method (the online probe's optimiser steps too)
            def hook(optimizer, *_):
                if sum(len(g["params"]) for g in optimizer.param_groups) > PROBE_PARAMS:
                    prof.step()
            handle = register_optimizer_step_post_hook(hook)
            try:
                train(cfg, progress=False, overwrite=True)
            finally:
                handle.remove()

        text = [f"{args.method} on {args.data}, {device}, batch {cfg.data.batch_size}, {args.steps} profiled steps "
                f"after {args.warmup}"]
        loop_prof, bare_prof = profiled(loop, args.warmup, args.steps), profiled(bare, args.warmup, args.steps)
        text.append(difference(loop_prof, bare_prof, args.steps, args.rows))
        text.append(summary(loop_prof, args.steps, "real loop", args.rows))
        text.append(summary(bare_prof, args.steps, "bare step", args.rows))
    out = Path(args.out) / f"profile_{args.method}.txt"
    out.write_text("\n".join(text))
    print("\n".join(line for block in text for line in block.splitlines() if line.startswith("==")), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
