"""Loss, online-probe accuracy over steps, and accuracy vs wall time, from metrics.jsonl files, as a PNG.

    python -m eval.plot_training OUT.png run_a/metrics.jsonl[:label] run_b/metrics.jsonl[:label] ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, runs = Path(argv[0]), argv[1:]
    fig, (ax_loss, ax_acc, ax_time) = plt.subplots(1, 3, figsize=(15, 3.6))
    for spec in runs:
        path, _, label = spec.partition(":")
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        label = label or Path(path).parent.name
        steps = [r["step"] for r in records]
        ax_loss.plot(steps, [r["loss"] for r in records], label=label, lw=1)
        probe = [(r["step"], r["elapsed"] / 60, r["online_probe_acc"]) for r in records if "online_probe_acc" in r]
        if probe:
            steps, minutes, acc = zip(*probe)
            ax_acc.plot(steps, acc, marker="o", ms=3, label=label)
            ax_time.plot(minutes, acc, marker="o", ms=3, label=label)
    ax_loss.set(xlabel="optimiser step", ylabel="training loss", title="loss")
    ax_acc.set(xlabel="optimiser step", ylabel="accuracy", title="online linear probe (held-out split)")
    ax_time.set(xlabel="wall time (minutes, pretraining)", ylabel="accuracy", title="accuracy vs wall time")
    for ax in (ax_loss, ax_acc, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
