"""What the command lines share: logging, friendly errors, and turning CKPT/DATA into features."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..encoders import CheckpointError, GridPooledEncoder
from ..eval import extract_features
from ..eval.inputs import (eval_dataset, fixed_input_size, fixed_subset, image_getter, resolve_encoder,  # noqa: F401
                           run_folder, trained_size)

DEFAULT_CACHE = Path(os.environ.get("SSL_REP_CACHE", Path.home() / ".cache" / "ssl_rep" / "features"))


def at_least(low: float, kind=int):
    """An argparse ``type``: a number (``kind``) of at least ``low``, else argparse's one-line error naming the flag
    (where a bad number would fail deep inside, or a 0 pass for "not given")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a{'n integer' if kind is int else ' number'}, got {text!r}")
        if not value >= low:   # also refuses nan
            raise argparse.ArgumentTypeError(f"must be {f'at least {low}' if low > float('-inf') else 'a number'}, "
                                             f"got {text}")
        return value
    return parse


def above_zero(text: str) -> float:
    """An argparse ``type``: a number greater than 0."""
    value = at_least(float("-inf"), float)(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("faiss", "faiss.loader", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def friendly_errors(prog: str, *error_types):
    """Exit with status 2 and a one-line message (no traceback) for the expected error types; 130 on Ctrl-C."""
    try:
        yield
    except error_types as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:   # Ctrl-C: nothing half-written to explain (feature caches publish by rename)
        print(f"\n{prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


EXPECTED_ERRORS = (CheckpointError, FileNotFoundError, ValueError, MemoryError, ImportError)


def add_encoder_and_data_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="OUT/checkpoints/last.pt, OUT/encoder.pt, random:<encoder> for a random-init baseline, "
                             "or untrained:<encoder.pt or checkpoint> for that encoder's architecture untrained "
                             "(same shape, same features: the like-for-like baseline), or pixels for the raw "
                             "images flattened")
    parser.add_argument("--data", required=True, help="dataset name (digits, fashion-mnist, cifar10, ...) or folder")
    parser.add_argument("--root", default=None, help="where the dataset's files are")
    parser.add_argument("--out", default=None, help="output folder (default: next to the checkpoint)")
    parser.add_argument("--batch-size", type=at_least(1), default=256)
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    parser.add_argument("--image-size", type=at_least(1), default=None,
                        help="evaluation size (default: the size the encoder trained at, on the dataset it trained "
                             "on; else a small in-memory set's own, folders' median short side, imagenet 224)")
    parser.add_argument("--workers", type=at_least(0), default=2)
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="feature cache ('none' to disable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="evaluate an int8 copy of the encoder (post-training static quantization on the CPU, "
                             "calibrated on 512 training images)")
    parser.add_argument("--features", choices=("backbone", "projection", "grid"), default="backbone",
                        help="backbone: the encoder's pooled features (default); projection: the output of the "
                             "projection head it was trained with (SimCLR training checkpoints), which can cluster "
                             "better when L2-normalised (--l2); grid: the encoder's last feature map average-pooled "
                             "to a G x G grid (--grid) and flattened, G*G times the backbone's width")
    parser.add_argument("--grid", type=int, default=2, help="cells per side for --features grid (default 2)")
    parser.add_argument("--patch-stride", type=at_least(1), default=None,
                        help="CPC encoders: read the patch grid at this stride (default: what the checkpoint records, "
                             "else the training stride)")
    parser.add_argument("--patch-crop", type=at_least(0), default=None,
                        help="CPC encoders: read each patch as its central N px resized back to the patch size, the "
                             "scale its jittered training crops had (default: what the checkpoint records; 0 for the "
                             "whole patch)")


def describe_features(encoder, args) -> str:
    """One line saying which representation the evaluation reads."""
    inner = getattr(encoder, "encoder", encoder)
    if getattr(encoder, "encoder_name", "") == "pixels":
        return "features: the raw pixels (normalised as an encoder reads them), flattened"
    if getattr(inner, "encoder_name", "") == "patch_grid":
        grid = (f"the patch grid average-pooled to {args.grid}x{args.grid} cells" if args.features == "grid"
                else "the mean of the patch vectors over the grid (CPC v2's linear protocol)")
        read = f"patches of {inner.patch_size} px at stride {inner.read_stride or inner.stride}"
        if inner.read_crop and inner.read_crop != inner.patch_size:
            read += f", each read as its central {inner.read_crop} px resized to {inner.patch_size}"
        return f"features: {grid}, {encoder.num_features}-d; {read}"
    if getattr(encoder, "encoder_name", "") == "grid_pooled" and args.features == "backbone":
        return (f"features: the autoencoder's spatial code, the last feature map average-pooled to {encoder.grid}x"
                f"{encoder.grid} cells (what its decoder read), {encoder.num_features}-d")
    if getattr(encoder, "encoder_name", "") == "code_layer" and args.features == "backbone":
        return (f"features: the autoencoder's code, a linear layer on {getattr(inner, 'encoder_name', 'its encoder')}'s "
                f"output (what its decoder read), {encoder.num_features}-d")
    what = {"backbone": "the encoder's globally pooled last feature map",
            "projection": "the projection head's output",
            "grid": f"the last feature map average-pooled to {args.grid}x{args.grid} cells"}[args.features]
    return f"features: {what}, {encoder.num_features}-d"


def encoder_for(args, calibration_split: str) -> torch.nn.Module:
    """The encoder named by ``--checkpoint``, read as ``--features`` says; with ``--quantize int8`` its int8 copy
    (then on the CPU)."""
    features = getattr(args, "features", "backbone")
    projection = features == "projection"
    if features != "backbone" and getattr(args, "quantize", "none") == "int8":
        raise ValueError("--quantize int8 quantizes the encoder alone: use it with --features backbone")
    if features == "grid" and args.grid < 1:
        raise ValueError(f"--grid must be at least 1 (cells per side), got {args.grid}")
    encoder = resolve_encoder(args.checkpoint, args.seed, projection)
    if args.image_size is None:   # the dataset the encoder trained on, at the size it trained at
        args.image_size = trained_size(encoder, args.data)
    fixed = fixed_input_size(encoder)
    if fixed is not None and features == "grid":
        raise ValueError("--features grid pools a spatial feature map, and a fully connected (mlp) encoder has none "
                         "(its map is 1x1): use --features backbone")
    if args.image_size is None and fixed is not None:   # any dataset, at the one size a fully connected encoder reads
        args.image_size = fixed
        logging.getLogger("ssl_rep.eval").info("the encoder reads %d px images only: %s read at %d px", fixed,
                                               args.data, fixed)
    set_patch_reading(encoder, getattr(args, "patch_stride", None), getattr(args, "patch_crop", None))
    if features == "grid":
        encoder = GridPooledEncoder(encoder, args.grid)
    if getattr(args, "quantize", "none") == "int8":
        from ..quantize import quantize_encoder
        calibration = fixed_subset(eval_dataset(args.data, calibration_split, args.root, args.image_size), 512,
                                   args.seed)
        encoder = quantize_encoder(encoder, calibration, progress=sys.stderr.isatty())
        args.device = "cpu"
    logging.getLogger("ssl_rep.eval").info("%s", describe_features(encoder, args))
    return encoder


def set_patch_reading(encoder, stride: int | None, crop: int | None) -> None:
    """``--patch-stride`` / ``--patch-crop``: how a patch-grid (CPC) encoder reads an image; None keeps its own."""
    if stride is None and crop is None:
        return
    if getattr(encoder, "encoder_name", "") != "patch_grid":
        raise ValueError(f"--patch-stride and --patch-crop apply to CPC's patch-grid encoders, not to "
                         f"{getattr(encoder, 'encoder_name', type(encoder).__name__)}")
    if stride is not None:
        if stride < 1:
            raise ValueError(f"--patch-stride must be at least 1, got {stride}")
        encoder.read_stride = stride
    if crop is not None:
        if not 0 <= crop <= encoder.patch_size:
            raise ValueError(f"--patch-crop must be in [0, {encoder.patch_size}] (0: the whole patch), got {crop}")
        encoder.read_crop = crop or None


def features_name(args) -> str:
    """What ``--features`` read, for the JSON and the report: ``backbone``, ``projection`` or ``grid GxG``."""
    return f"grid {args.grid}x{args.grid}" if args.features == "grid" else args.features


def default_out(args) -> Path:
    if args.out:
        return Path(args.out)
    if args.checkpoint == "pixels":
        return Path("runs") / "pixels"
    if args.checkpoint.startswith("random:"):
        return Path("runs") / ("random_" + re.sub(r"[^\w.-]", "_", args.checkpoint[len("random:"):]))
    if args.checkpoint.startswith("untrained:"):   # the twin's results beside the trained encoder's, apart from them
        return run_folder(args.checkpoint[len("untrained:"):]) / "untrained"
    return run_folder(args.checkpoint)


def split_dataset(data: str, split: str, args, ten_crop: bool = False, subset: int | None = None):
    """Split ``split`` of ``data`` as the encoder reads it (``--train-subset`` images of it with ``subset``)."""
    return fixed_subset(eval_dataset(data, split, args.root, args.image_size, ten_crop), subset, args.seed)


def features_of(encoder, dataset, args, ten_crop: bool = False):
    """``(features (N, D), labels or None)`` of ``dataset``, cached under ``--cache-dir``."""
    cache = None if args.cache_dir == "none" else args.cache_dir
    X, y = extract_features(encoder, dataset, batch_size=args.batch_size, device=args.device, ten_crop=ten_crop,
                            num_workers=args.workers, cache_dir=cache, progress=sys.stderr.isatty())
    return np.asarray(X), y


def features_for(encoder, data: str, split: str, args):
    """``(features, labels, dataset)`` of split ``split`` of ``data``."""
    dataset = split_dataset(data, split, args)
    return *features_of(encoder, dataset, args), dataset
