"""Feature-extraction throughput (``extract_features`` over a whole split, as ssl-probe runs it) vs
the bare encoder forward on one batch already prepared on the device, same batch size and precision.
Goal: >= 0.9. Each extraction is bracketed by bare-forward runs over as many images, and compared with
their mean (a GPU's clocks and a launch-bound step drift between runs a fraction of a second long);
the batched paths report the median over ``--repeats`` such rounds and the range of the rounds. Usage:
    python -m eval.bench_extract [--data fashion-mnist --root DIR] [--device cuda] [--encoder resnet20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from eval.bench_step_overhead import sync
from eval.results_md import device_table_section, emit, parse_or_render
from ssl_rep.data import build_dataset, build_transform, stats_for
from ssl_rep.encoders import create_encoder
from ssl_rep.eval import extract_features, features


@torch.no_grad()
def bare_images_per_s(encoder, batch: torch.Tensor, n: int) -> float:
    device = batch.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        encoder(batch)   # warm-up
    sync(device)
    start, done = time.perf_counter(), 0
    while done < n:
        with autocast:
            encoder(batch).float()
        done += len(batch)
    sync(device)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="digits")
    parser.add_argument("--root", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--encoder", default="resnet20")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="extractions of the batched path (median)")
    parser.add_argument("--upload-chunks", type=int, default=8,
                        help="pieces for the overlapped-upload row (cuda, while UPLOAD_CHUNKS is off by default)")
    args = parse_or_render(parser, render)
    if args is None:
        return
    device = torch.device(args.device)
    transform = build_transform("eval", stats=stats_for(args.data), resize=None)
    dataset = build_dataset(args.data, split=args.split, root=args.root, transform=transform)
    per_image = torch.utils.data.Subset(dataset, range(len(dataset)))   # hides the array: the DataLoader path
    encoder = create_encoder(args.encoder).to(device).eval()
    extract_features(encoder, dataset, args.batch_size, device, progress=False)   # warm-up
    batch = torch.stack([dataset[i][0] for i in range(min(args.batch_size, len(dataset)))]).to(device)
    bare_rate = lambda: bare_images_per_s(encoder, batch, len(dataset))  # noqa: E731
    rows = []
    default_chunks = features.UPLOAD_CHUNKS
    paths = [("batched (in-memory)", dataset, features.RESIDENT_BYTES, default_chunks),
             ("DataLoader (per image)", per_image, features.RESIDENT_BYTES, default_chunks)]
    if device.type == "cuda":   # sets over RESIDENT_BYTES go to the GPU batch by batch from pinned memory
        paths.insert(1, ("batched, pinned copy per batch (sets > 1 GiB)", dataset, 0, default_chunks))
        if not default_chunks:   # the experimental overlapped upload, beside the default it would replace
            paths.insert(1, (f"batched, upload in {args.upload_chunks} pieces overlapped (UPLOAD_CHUNKS)", dataset,
                             features.RESIDENT_BYTES, args.upload_chunks))
    for label, ds, resident, chunks in paths:
        features.RESIDENT_BYTES, features.UPLOAD_CHUNKS = resident, chunks
        rates, bares = [], [bare_rate()]
        for _ in range(args.repeats if ds is dataset else 1):   # the slow per-image path once
            start = time.perf_counter()
            extract_features(encoder, ds, args.batch_size, device, num_workers=args.workers, progress=False)
            rates.append(len(dataset) / (time.perf_counter() - start))
            bares.append(bare_rate())
        ratios = [rate / ((before + after) / 2) for rate, before, after in zip(rates, bares, bares[1:])]
        rows.append({"path": label, "images": len(dataset), "encoder": args.encoder, "batch_size": args.batch_size,
                     "workers": args.workers, "extract_img_s": statistics.median(rates),
                     "bare_img_s": statistics.median(bares), "ratio": statistics.median(ratios),
                     "round_ratios": ratios, "device": device.type, "data": args.data})
        print(json.dumps(rows[-1]), flush=True)
    emit(rows, args, render)


def render(rows: list[dict], command: str | None, machine_name: str | None = None) -> None:
    device_table_section(rows, "bench-extract", "Feature extraction vs bare forward", "python -m eval.bench_extract",
                         ["data, encoder, batch", "extraction path", "extract img/s", "bare forward img/s",
                          "ratio (goal >= 0.9)", "per-round ratios"],
                         lambda r: f"| {r['data']} ({r['images']}), {r['encoder']}, {r['batch_size']} | {r['path']} | "
                                   f"{r['extract_img_s']:,.0f} | {r['bare_img_s']:,.0f} | {r['ratio']:.2f} | "
                                   f"{round_range(r)} |",
                         command, machine_name, "Each extraction is compared with the mean of the bare-forward runs "
                         "just before and after it (bracketed); the ratio is the median over rounds. Runs saved "
                         "before the bracketing (no per-round column) compared every extraction with one bare run.")


def round_range(row: dict) -> str:
    ratios = row.get("round_ratios")
    if not ratios:
        return "–"
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else f"{ratios[0]:.2f}"


if __name__ == "__main__":
    main()
