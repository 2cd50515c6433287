"""Soak: a long CPU pretraining run in a child process, its resident memory (RSS, with any DataLoader
workers) sampled every few seconds. Memory should rise while the first epoch warms up, then stay flat.
    python -m eval.soak [--minutes 10] [--recipe ae_digits] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from eval.results_md import emit, parse_or_render, update_section


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children, MiB (from /proc; Linux)."""
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--recipe", default="ae_digits")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("overrides", nargs="*")
    args = parse_or_render(parser, render)
    if args is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ssl_rep.cli.pretrain", args.recipe, f"out_dir={tmp}", "trainer.device=cpu",
               "trainer.epochs=100000", "trainer.checkpoint_every=200", *args.overrides]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        samples, start = [], time.time()
        while time.time() - start < args.minutes * 60 and proc.poll() is None:
            time.sleep(args.every)
            samples.append((time.time() - start, rss_mib(proc.pid)))
        alive = proc.poll() is None
        proc.kill()
        proc.wait()
        steps = 0
        metrics = Path(tmp) / "metrics.jsonl"
        if metrics.exists():
            lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
            steps = lines[-1]["step"] if lines else 0
    if not alive:
        raise SystemExit(f"the run ended early: {proc.stderr.read()[-2000:]}")
    t = [s[0] for s in samples]
    rss = [s[1] for s in samples]
    after = [r for tt, r in samples if tt >= 60]
    half = len(after) // 2
    result = {"recipe": args.recipe, "overrides": args.overrides, "minutes": args.minutes, "steps": steps,
              "samples": samples, "rss_at_1min": after[0] if after else rss[-1], "rss_end": rss[-1],
              "rss_max": max(rss), "rss_first_half_mean": sum(after[:half]) / max(half, 1),
              "rss_second_half_mean": sum(after[half:]) / max(len(after) - half, 1), "seconds": t[-1]}
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    emit(result, args, render)


def render(r: dict, command: str | None, machine_name: str | None = None) -> None:
    drift = r["rss_second_half_mean"] - r["rss_first_half_mean"]
    text = (f"`{r['recipe']}` on the CPU for {r['seconds'] / 60:.1f} minutes ({r['steps']} optimiser steps, a "
            f"checkpoint every 200), RSS sampled every few seconds: {r['rss_at_1min']:.0f} MiB after one minute, "
            f"{r['rss_end']:.0f} MiB at the end, at most {r['rss_max']:.0f} MiB; mean of the second half of the run "
            f"minus the first half (after minute 1): **{drift:+.1f} MiB**.")
    update_section("soak", "Soak: memory over a long CPU run", command or "python -m eval.soak", text,
                   machine_name=machine_name)


if __name__ == "__main__":
    main()
