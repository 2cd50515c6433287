"""Time per step of the real training loop vs the same method's bare forward + backward + optimiser step.

The real loop includes data loading, augmentation, the lr schedule, the online probe's training,
logging and the recipe's checkpoint cadence (not the probe's end-of-epoch pass over the held-out
split, which is evaluation); the bare step runs on one batch already prepared in memory.
Goal: ratio <= 1.10. Each method runs ``--repeats`` rounds of (real loop, bare steps) back to back;
the ratio is median loop time / median bare time, and the range of the per-round ratios shows the
noise (on a shared GPU host one short window scatters by +-0.15). Each round times the bare steps
before and after its loop run and takes their mean, so a drift of the host's speed during the round
cancels. Usage:
    python -m eval.bench_step_overhead [--data digits] [--device cpu] [--steps 40] [--repeats 3] [--methods ...]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from eval.results_md import add_output_args, command_line, update_section
from ssl_rep.encoders import create_encoder
from ssl_rep.methods import create_method
from ssl_rep.train import load_config, train
from ssl_rep.train.data import build_train_dataset
from ssl_rep.train.setup import fast_formats, method_options, reuse_host_memory, to_device
from ssl_rep.train.metrics import read_metrics
from ssl_rep.train.optim import build_optimizer

RECIPES = {"autoencoder": "ae", "cpc": "cpc", "simclr": "simclr", "supervised": "supervised", "byol": "byol",
           "moco": "moco", "mocov3": "mocov3", "simsiam": "simsiam", "barlow_twins": "barlow_twins",
           "vicreg": "vicreg", "dino": "dino"}


def isolated(fn, *args):
    """``fn(*args)`` in a fresh process: what one measurement sets process-wide (ssl_rep's malloc settings, a
    peer library's state) never reaches the next one."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_step(cfg, device):
    """The method's forward + backward + optimiser step on one batch already on ``device`` (a callable)."""
    dataset, size, num_classes, _ = build_train_dataset(cfg)
    items = [dataset[i] for i in range(cfg.data.batch_size)]
    images = items[0][0]
    if isinstance(images, list):
        x = [torch.stack([it[0][v] for it in items]) for v in range(len(images))]
    else:
        x = torch.stack([it[0] for it in items])
    use_bf16, channels_last = fast_formats(cfg, device)   # the loop's own formats (bf16 / channels_last)
    reuse_host_memory(cfg, device)   # and its malloc settings
    batch = to_device((x, torch.tensor([it[1] for it in items])), device, channels_last)
    method = create_method(cfg.method.name, create_encoder(cfg.encoder.name, **cfg.encoder.options),
                           **method_options(cfg, size, num_classes)).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    opt = build_optimizer(method, cfg.optim)
    count = iter(range(10**9))

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = method(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(next(count), 10**9)   # the momentum teachers' update is the method's work, not overhead

    return step


def bare_step_time(cfg, device, steps: int, warmup: int) -> float:
    step = bare_step(cfg, device)
    for _ in range(warmup):
        step()
    sync(device)   # like the loop, the timed steps queue work without waiting for the device in between
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def loop_step_time(cfg, steps: int, warmup: int) -> float:
    """Mean wall time per step between step ``warmup`` and ``warmup + steps`` of a real run."""
    train(cfg, progress=False, overwrite=True)   # rounds reuse the out_dir
    lines = {r["step"]: r for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl")}
    return (lines[warmup + steps]["elapsed"] - lines[warmup]["elapsed"]) / steps


def overhead_config(method: str, data: str, device: torch.device, out_dir: str, warmup: int, steps: int,
                    root: str | None = None, batch_size: int | None = None, extra: list[str] = ()):
    """The recipe of ``method`` on ``data`` for a timed window of ``warmup + steps`` steps."""
    # The recipe's own logging cadence (a logging step waits for the device); warmup and steps must be
    # multiples of it so both ends of the timed window are logged.
    # data.eval_split=null: the online probe still trains every step, but its end-of-epoch score on the
    # held-out split (a forward pass over it: evaluation, not step overhead) is left out; on digits an
    # epoch is 11-22 steps, so that pass alone adds 10-20% to a short window.
    overrides = [f"out_dir={out_dir}", f"trainer.device={device}", "data.eval_split=null",
                 f"trainer.max_steps={warmup + steps}", f"data.dataset={data}",
                 "data.num_workers=2" if device.type == "cpu" else "data.num_workers=8"]
    if root:
        overrides.append(f"data.root={root}")
    if batch_size:
        overrides.append(f"data.batch_size={batch_size}")
    cfg = load_config(f"{RECIPES[method]}_{'digits' if data == 'digits' else 'fashion_mnist'}",
                      overrides + list(extra))
    if warmup % cfg.trainer.log_every or steps % cfg.trainer.log_every:
        raise SystemExit(f"--warmup and --steps must be multiples of trainer.log_every={cfg.trainer.log_every} "
                         f"({method})")
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (loop, bare) per method")
    parser.add_argument("--methods", default="autoencoder,cpc,simclr,supervised")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--root", default=None, help="dataset root (e.g. the Fashion-MNIST folder)")
    parser.add_argument("--override", action="append", default=[], help="KEY=VALUE for every run, e.g. "
                        "data.resident=on (repeatable; shown beside the method)")
    add_output_args(parser)
    args = parser.parse_args()
    if args.render:
        render(json.loads(Path(args.render).read_text()), args.data, args.device, args.command, args.machine,
               variant=" ".join(args.override))
        return
    device = torch.device(args.device)
    rows = []
    for method in args.methods.split(","):
        loops, bares = [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = overhead_config(method, args.data, device, tmp, args.warmup, args.steps, args.root,
                                      args.batch_size, args.override)
                # bare steps before and after the loop: their mean cancels a host speed drift within the round
                before = bare_step_time(cfg, device, args.steps, args.warmup)
                loops.append(loop_step_time(cfg, args.steps, args.warmup))
                bares.append((before + bare_step_time(cfg, device, args.steps, args.warmup)) / 2)
        per_round = [loop / bare for loop, bare in zip(loops, bares)]
        loop, bare = statistics.median(loops), statistics.median(bares)
        rows.append({"method": " ".join([method, *args.override]), "batch_size": cfg.data.batch_size, "loop_ms": loop * 1e3,
                     "bare_ms": bare * 1e3, "ratio": loop / bare, "ratio_min": min(per_round),
                     "ratio_max": max(per_round), "repeats": args.repeats, "steps": args.steps, "bracketed": True,
                     "checkpoint_every": cfg.trainer.checkpoint_every})
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.no_results_md:
        render(rows, args.data, device.type, command_line(), variant=" ".join(args.override))


def render(rows: list[dict], data: str, device: str, command: str | None, machine_name: str | None = None,
           variant: str = "") -> None:
    table = ["| method | batch | loop ms/step | bare fwd+bwd+step ms | ratio (goal <= 1.10) | per-round ratios |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['method']} | {r['batch_size']} | {r['loop_ms']:.1f} | {r['bare_ms']:.1f} | {r['ratio']:.2f} | "
              f"{r.get('ratio_min', r['ratio']):.2f}-{r.get('ratio_max', r['ratio']):.2f} |" for r in rows]
    rounds = rows[0].get("repeats", 1)
    rounds_of = ("(bare steps, real loop, bare steps)" if rows[0].get("bracketed") else "(real loop, bare steps)")
    note = (f"Medians over {rounds} rounds of {rounds_of}, {rows[0].get('steps', '?')} timed steps each"
            f"{', the loop against the mean of the two bare runs around it' if rows[0].get('bracketed') else ''}; the "
            f"last column is the range of the per-round ratios. The online probe trains every step; its "
            f"end-of-epoch score on the held-out split is evaluation and is off (`data.eval_split=null`).") \
        if rounds > 1 else ""
    key = f"step-overhead-{data}-{device}" + (f"-{re.sub('[^a-z0-9]+', '-', variant.lower())}" if variant else "")
    update_section(key, f"Training-loop overhead ({data}, {device}{', ' + variant if variant else ''})",
                   command or "python -m eval.bench_step_overhead", "\n".join(table) + ("\n\n" + note if note else ""),
                   machine_name=machine_name)


if __name__ == "__main__":
    main()
