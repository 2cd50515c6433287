"""SimCLR's full training loop, ssl_rep against lightly (the peer a user would pick instead), side by side.

Same model (ssl_rep's ResNet-18 with the CIFAR stem for both), batch, 32-px Fashion-MNIST views, augmentation
(random resized crop from 0.2, flip, colour jitter 0.8 at strength 1, grayscale 0.2, no blur at 32 px),
projection head (512 -> 512 -> 128), NT-Xent at temperature 0.2, SGD with momentum, and DataLoader workers.
lightly runs its own ``SimCLRTransform``, ``SimCLRProjectionHead`` and ``NTXentLoss`` in the plain loop its docs
show; ssl_rep runs ``ssl_rep.train.train`` on the recipe with the same settings (online probe off). Each round runs
both loops, alternating which goes first, each in a fresh process; the time per step is taken between step ``--warmup`` and
``--warmup + --steps`` (start-up excluded in both), and the ratio is median ssl_rep img/s over median lightly
img/s. Rows: the same settings in fp32; the two bare steps (forward, backward, SGD) on one batch already in memory,
fp32, which splits a gap between the model's compute and the loop around it; then ssl_rep's defaults, which pick bf16 and channels_last where the
machine runs them fast (``trainer.precision=auto``, ``trainer.channels_last`` unset). lightly is a benchmark dependency only: ``pip install lightly``.
Usage:
    python -m eval.bench_vs_lightly --root /usr/share/datasets/fashion-mnist [--rounds 2 --steps 10 --warmup 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from eval.bench_step_overhead import bare_step_time, isolated, loop_step_time, sync
from eval.results_md import caps_note, cpu_kind, emit, kernel_caps, parse_or_render, table_section
from ssl_rep.data import build_dataset
from ssl_rep.data.transforms import DATASET_STATS
from ssl_rep.encoders import create_encoder
from ssl_rep.train import load_config
from ssl_rep.train.setup import fast_formats

BATCH, SIZE, TEMPERATURE, LR, MIN_SCALE = 128, 32, 0.2, 0.06, 0.2


class PILImages(torch.utils.data.Dataset):
    """Fashion-MNIST's training images as PIL RGB images with their labels: what lightly's transforms take."""

    def __init__(self, root, transform):
        self.data, self.transform = build_dataset("fashion-mnist", split="train", root=root), transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(np.asarray(self.data.images[i]))), int(self.data.labels[i])


def lightly_parts(root, workers: int, device: torch.device):
    """lightly's SimCLR as its docs build it: the loader over its transform, and one training step on a batch."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    mean, std = DATASET_STATS["fashion-mnist"]
    transform = SimCLRTransform(input_size=SIZE, min_scale=MIN_SCALE, gaussian_blur=0.0,
                                normalize={"mean": list(mean), "std": list(std)})
    loader = torch.utils.data.DataLoader(PILImages(root, transform), batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    backbone = create_encoder("resnet18", stem="cifar").to(device)
    head = SimCLRProjectionHead(backbone.num_features, 512, 128).to(device)
    criterion = NTXentLoss(temperature=TEMPERATURE)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)

    def step(x0, x1):
        loss = criterion(head(backbone(x0)), head(backbone(x1)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return loader, step


def lightly_bare_step_time(root, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step of lightly's forward + backward + SGD step on one batch already in memory."""
    loader, step = lightly_parts(root, 0, device)
    (x0, x1), _ = next(iter(loader))
    x0, x1 = x0.to(device), x1.to(device)
    for _ in range(warmup):
        step(x0, x1)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x0, x1)
    sync(device)
    return (time.perf_counter() - start) / steps


def lightly_step_time(root, steps: int, warmup: int, workers: int, device: torch.device) -> float:
    """Seconds per step of lightly's SimCLR loop between step ``warmup`` and ``warmup + steps``."""
    loader, train_step = lightly_parts(root, workers, device)
    start = None
    for step, ((x0, x1), _) in enumerate(loader, 1):
        loss = train_step(x0.to(device), x1.to(device))
        if step == warmup:
            float(loss.detach())   # wait for the device, as ssl_rep's logged step does
            start = time.perf_counter()
        if step == warmup + steps:
            float(loss.detach())
            return (time.perf_counter() - start) / steps
    raise ValueError(f"one epoch has fewer than {warmup + steps} steps")


def ssl_rep_config(root, steps: int, warmup: int, workers: int, device: torch.device, extra=()):
    out = tempfile.mkdtemp(prefix="bench_vs_lightly_")
    return load_config("simclr_fashion_mnist", [
        f"out_dir={out}", f"data.root={root}", f"trainer.device={device}", f"trainer.max_steps={warmup + steps}",
        "encoder.name=resnet18", "encoder.stem=cifar", f"data.batch_size={BATCH}", f"data.image_size={SIZE}",
        f"data.min_scale={MIN_SCALE}", f"data.num_workers={workers}", f"method.temperature={TEMPERATURE}",
        "method.hidden_dim=512", "method.out_dim=128", "optim.name=sgd", f"optim.lr={LR}", "optim.momentum=0.9",
        "optim.weight_decay=5e-4", "trainer.online_probe=false", "data.eval_split=null", *extra])


FP32 = ["trainer.precision=fp32", "trainer.channels_last=false"]


def ssl_rep_bare_step_time(root, steps: int, warmup: int, device: torch.device, extra=()) -> float:
    return bare_step_time(ssl_rep_config(root, steps, warmup, 0, device, extra), device, steps, warmup)


def ssl_rep_step_time(root, steps: int, warmup: int, workers: int, device: torch.device, extra=()) -> float:
    return loop_step_time(ssl_rep_config(root, steps, warmup, workers, device, extra), steps, warmup)


def compare(label: str, args, device, extra=(), bare: bool = False) -> dict:
    """Both loops (``bare``: both bare steps on a batch in memory) in alternating rounds, each measurement in a
    process of its own; img/s and their ratio."""
    times = {"ssl_rep": [], "lightly": []}
    if bare:
        runs = {"ssl_rep": (ssl_rep_bare_step_time, args.root, args.steps, args.warmup, device, extra),
                "lightly": (lightly_bare_step_time, args.root, args.steps, args.warmup, device)}
    else:
        runs = {"ssl_rep": (ssl_rep_step_time, args.root, args.steps, args.warmup, args.workers, device, extra),
                "lightly": (lightly_step_time, args.root, args.steps, args.warmup, args.workers, device)}
    for r in range(args.rounds):
        for side in ("ssl_rep", "lightly") if r % 2 == 0 else ("lightly", "ssl_rep"):
            times[side].append(isolated(*runs[side]))
        print(f"  {label} round {r + 1}: ssl_rep {BATCH / times['ssl_rep'][-1]:.1f} img/s, lightly "
              f"{BATCH / times['lightly'][-1]:.1f} img/s", flush=True)
    ours, theirs = (BATCH / statistics.median(times[s]) for s in ("ssl_rep", "lightly"))
    return {"case": label, "ssl_rep_img_s": ours, "lightly_img_s": theirs, "ratio": ours / theirs,
            "rounds_ssl_rep_img_s": [BATCH / t for t in times["ssl_rep"]],
            "rounds_lightly_img_s": [BATCH / t for t in times["lightly"]]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=None, help="the Fashion-MNIST folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (a multiple of 5)")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed window (a multiple of 5)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ssl-rep-override", action="append", default=[],
                        help="extra ssl_rep settings for the last row (default: none, ssl_rep's defaults)")
    args = parse_or_render(parser, render, required=("root",))
    if args is None:
        return
    import lightly
    device = torch.device(args.device)
    bf16, channels_last = fast_formats(ssl_rep_config(args.root, 5, 5, 0, device), device)
    picked = f"{'bf16' if bf16 else 'fp32'}{' + channels_last' if channels_last else ''}"
    extra = "".join(f" + {o}" for o in args.ssl_rep_override)
    rows = [compare("same settings, fp32", args, device, FP32),
            compare("bare step on one batch in memory (forward, backward, SGD), fp32", args, device, FP32, bare=True),
            compare(f"ssl_rep's defaults (auto picks {picked} here){extra}; lightly as above", args, device,
                    args.ssl_rep_override)]
    emit({"rows": rows, "device": device.type, "lightly": lightly.__version__, "batch": BATCH, "image_size": SIZE,
          "steps": args.steps, "warmup": args.warmup, "workers": args.workers, "caps": kernel_caps(),
          "cpu_capability": torch.backends.cpu.get_cpu_capability()}, args, render)


def render(result: dict, command: str | None = None, machine_name: str | None = None) -> None:
    lines = [f"| {r['case']} | {r['ssl_rep_img_s']:.1f} | {r['lightly_img_s']:.1f} | {r['ratio']:.2f}x | "
             f"{', '.join(f'{v:.1f}' for v in r['rounds_ssl_rep_img_s'])} / "
             f"{', '.join(f'{v:.1f}' for v in r['rounds_lightly_img_s'])} |" for r in result["rows"]]
    caps = result.get("caps") or {}
    suffix, words = cpu_kind(result["cpu_capability"], caps) if result["device"] == "cpu" else ("", "")
    where = f"{result['device']}, {words}" if words else result["device"]
    table_section(f"bench-vs-lightly-{result['device']}{suffix}", f"SimCLR's training loop: ssl_rep against lightly "
                  f"({where})", "python -m eval.bench_vs_lightly",
                  ["case", "ssl_rep img/s", f"lightly {result['lightly']} img/s", "ratio (goal >= 1.3x)",
                   "rounds ssl_rep / lightly"], lines, command, machine_name,
                  note=f"ResNet-18 (CIFAR stem), batch {result['batch']}, two {result['image_size']}-px views, "
                       f"{result['workers']} DataLoader workers, SGD; steps {result['warmup']}-"
                       f"{result['warmup'] + result['steps']} of each loop timed, median over rounds (the two "
                       "loops alternate which goes first, each in a fresh process)." + caps_note(caps))


if __name__ == "__main__":
    main()
