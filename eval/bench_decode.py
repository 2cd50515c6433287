"""JPEG folders: decoding on the training device (``data.decode_on=device``: nvjpeg on a GPU) vs
PIL decoding and augmentation in DataLoader workers, same files, transform, batch and workers.
The JPEGs are written by the script at ImageNet's typical size (500 x 375, quality 90). Usage:
    python -m eval.bench_decode [--device cuda] [--workers 8] [--n 2048] [--transforms imagenet_rrc,simclr]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval.bench_data_path import epoch_seconds
from eval.results_md import device_table_section, emit, parse_or_render
from ssl_rep.train import load_config
from ssl_rep.train.data import build_train_dataset
from ssl_rep.train.loaders import build_loader


def write_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> float:
    """``n`` JPEGs in two class folders: smooth colour fields plus grain, about a photo's size on disk.
    Returns the mean file size in KB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fields = [np.sin(2 * np.pi * (rng.uniform(0.5, 4) * xx + rng.uniform(0.5, 4) * yy) + rng.uniform(0, 6))
                  for _ in range(3)]
        pixels = 110 * (1 + np.stack(fields, -1)) + rng.normal(0, 12, (height, width, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / "ab"[i % 2] / f"{i:05d}.jpg", quality=90)
    return float(np.mean([p.stat().st_size for p in folder.rglob("*.jpg")]) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--n", type=int, default=1024, help="JPEGs to write and read (one epoch)")
    parser.add_argument("--size", default="500x375")
    parser.add_argument("--transforms", default="imagenet_rrc,simclr")
    args = parse_or_render(parser, render)
    if args is None:
        return
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kb = write_photos(Path(tmp), args.n, width, height)
        for transform in args.transforms.split(","):
            seconds = {}
            for decode_on in ("workers", "device"):
                cfg = load_config("simclr_digits" if transform == "simclr" else "ae_digits",
                                  [f"data.dataset={tmp}", "data.image_size=224", f"data.batch_size={args.batch_size}",
                                   f"data.num_workers={args.workers}", f"data.transform={transform}",
                                   f"data.decode_on={decode_on}", f"trainer.device={args.device}"])
                dataset, size, _, name = build_train_dataset(cfg)
                loader, sampler = build_loader(dataset, cfg, device, cfg.seed, transform_name=name, size=size)
                sampler.set_epoch(1)
                epoch_seconds(loader, device, 2)   # warm-up: workers start, kernels load, files enter the page cache
                sampler.set_epoch(0)
                seconds[decode_on], n = epoch_seconds(loader, device, None)
            rows.append({"transform": transform, "images": n, "kb_per_file": kb, "size": args.size,
                         "batch_size": args.batch_size, "workers": args.workers, "device": device.type,
                         "workers_img_s": n / seconds["workers"], "device_img_s": n / seconds["device"],
                         "speedup": seconds["workers"] / seconds["device"]})
            print(json.dumps(rows[-1]), flush=True)
    emit(rows, args, render)


def render(rows: list[dict], command: str | None, machine_name: str | None = None) -> None:
    r0 = rows[0]
    device_table_section(
        rows, "bench-decode", "JPEG decoding: on the device vs in DataLoader workers", "python -m eval.bench_decode",
        ["transform (224 px)", "images", "PIL in workers img/s", "decode_on=device img/s", "speed-up"],
        lambda r: f"| {r['transform']} | {r['images']} | {r['workers_img_s']:,.0f} | {r['device_img_s']:,.0f} | "
                  f"{r['speedup']:.2f}x |", command, machine_name,
        note=f"{r0['images']} JPEGs of {r0['size']} px ({r0['kb_per_file']:.0f} KB each, in the page cache), "
             f"batch {r0['batch_size']}, {r0['workers']} DataLoader workers in both paths; one epoch after "
             f"a 2-batch warm-up. With `decode_on=device` the workers only read files and parse headers; "
             f"on the CPU the 'device' is the training process itself (torchvision's libjpeg-turbo decoder).")


if __name__ == "__main__":
    main()
