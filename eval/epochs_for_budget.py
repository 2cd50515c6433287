"""How many epochs fit a time budget, from a short timing run's metrics.jsonl (used by gpu_suite.sh's
"wide" stage, so an untimed encoder cannot overrun the device call and leave no result).
    python -m eval.epochs_for_budget RUN/metrics.jsonl --budget 300 --images 60000 --batch-size 256
prints the number of epochs; the reasoning goes to stderr. The second half of the timing run sets the
time per step (the first half holds warmup, cudnn autotuning and any compilation).
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def seconds_per_step(lines: list[dict]) -> float:
    timed = [r for r in lines if "elapsed" in r and "step" in r]
    if len(timed) < 2:
        raise ValueError(f"need at least two logged steps with 'elapsed' to time a run, found {len(timed)}")
    last = timed[-1]
    first = min((r for r in timed if r["step"] >= last["step"] / 2), key=lambda r: r["step"])
    if first is last:
        first = timed[-2]
    return (last["elapsed"] - first["elapsed"]) / (last["step"] - first["step"])


def epochs_for_budget(lines: list[dict], budget_s: float, images: int, batch_size: int) -> int:
    """The most whole epochs (at least 1) whose steps, at the measured time per step, fit ``budget_s``."""
    per_epoch = seconds_per_step(lines) * (images // batch_size)   # the loop drops the last partial batch
    return max(1, math.floor(budget_s / per_epoch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics")
    parser.add_argument("--budget", type=float, required=True, help="seconds of training")
    parser.add_argument("--images", type=int, required=True, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, required=True)
    args = parser.parse_args()
    with open(args.metrics) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    epochs = epochs_for_budget(lines, args.budget, args.images, args.batch_size)
    print(f"{seconds_per_step(lines):.4f} s/step x {args.images // args.batch_size} steps/epoch: {epochs} epochs fit "
          f"{args.budget:.0f} s", file=sys.stderr)
    print(epochs)


if __name__ == "__main__":
    main()
