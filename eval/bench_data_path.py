"""One epoch of augmented training batches: the resident path (uint8 images on the device, batched
augmentation there) vs a torchvision DataLoader (per-image PIL augmentation in worker processes),
same data, same transform, same batch size. Goal on a GPU: >= 10x. Usage:
    python -m eval.bench_data_path [--data fashion-mnist --root DIR] [--device cuda] [--workers 8]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from eval.results_md import device_table_section, emit, parse_or_render
from ssl_rep.data import stats_for
from ssl_rep.train import load_config
from ssl_rep.train.data import build_train_dataset
from ssl_rep.train.loaders import build_loader
from ssl_rep.train.loaders import ResidentLoader


def epoch_seconds(loader, device, max_batches: int | None) -> tuple[float, int]:
    """Wall time to draw (and move to ``device``) ``max_batches`` batches, and how many images that was."""
    n = 0
    start = time.perf_counter()
    for b, (views, _) in enumerate(loader):
        views = views if isinstance(views, list) else [views]
        for v in views:
            v.to(device, non_blocking=True)
        n += len(views[0])
        if max_batches and b + 1 >= max_batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--root", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-batches", type=int, default=None, help="stop each epoch early (CPU runs)")
    parser.add_argument("--recipes", default="simclr,supervised")
    args = parse_or_render(parser, render)
    if args is None:
        return
    device = torch.device(args.device)
    rows = []
    for recipe in args.recipes.split(","):
        name = f"{recipe}_{'digits' if args.data == 'digits' else 'fashion_mnist'}"
        overrides = [f"data.dataset={args.data}", f"data.batch_size={args.batch_size}",
                     f"data.num_workers={args.workers}", *([f"data.root={args.root}"] if args.root else [])]
        cfg = load_config(name, overrides)
        dataset, size, _, transform = build_train_dataset(cfg)
        loader, sampler = build_loader(dataset, cfg, device, cfg.seed)
        resident = ResidentLoader(dataset.tensor(), torch.as_tensor(dataset.labels), cfg.data.batch_size, cfg.seed,
                                     transform, stats_for(cfg.data.dataset), size,
                                     n_views=2 if recipe == "simclr" else 1, device=device,
                                     min_scale=cfg.data.min_scale)
        epoch_seconds(resident, device, 3)   # warm-up: kernels, worker start
        sampler.set_epoch(1)
        epoch_seconds(loader, device, 3)
        sampler.set_epoch(0)
        t_loader, n = epoch_seconds(loader, device, args.max_batches)
        t_resident, n2 = epoch_seconds(resident, device, args.max_batches)
        assert n == n2, (n, n2)
        rows.append({"transform": transform, "images": n, "batch_size": args.batch_size, "workers": args.workers,
                     "dataloader_img_s": n / t_loader, "resident_img_s": n / t_resident, "speedup": t_loader / t_resident,
                     "device": device.type, "data": args.data})
        print(json.dumps(rows[-1]), flush=True)
    emit(rows, args, render)


def render(rows: list[dict], command: str | None, machine_name: str | None = None) -> None:
    device_table_section(rows, "bench-data-path", "Data path: resident batched augmentation vs DataLoader",
                         "python -m eval.bench_data_path",
                         ["data, transform", "images", "DataLoader (workers) img/s", "resident img/s",
                          "speed-up (goal >= 10x on GPU)"],
                         lambda r: f"| {r['data']}, {r['transform']} | {r['images']} | {r['dataloader_img_s']:,.0f} "
                                   f"({r['workers']}) | {r['resident_img_s']:,.0f} | {r['speedup']:.1f}x |",
                         command, machine_name)


if __name__ == "__main__":
    main()
