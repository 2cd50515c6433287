"""ssl-embed --checkpoint CKPT --data DATA --out DIR: a dataset's features to embeddings.npy + index.csv."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..eval.embeddings import DTYPES, embed
from .common import EXPECTED_ERRORS, add_encoder_and_data_args, encoder_for, eval_dataset, friendly_errors, \
    setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ssl-embed", description="Features of every image of a dataset or folder, in a fixed order: "
        "OUT/embeddings.npy (np.load(..., mmap_mode='r')) and OUT/index.csv (row, path or number, label, class). "
        "Run it again on the same OUT to continue a stopped run.")
    add_encoder_and_data_args(parser)
    parser.add_argument("--split", default="train", help="which split of a named dataset (default train)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required: the folder for embeddings.npy and index.csv")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    with friendly_errors("ssl-embed", *EXPECTED_ERRORS):
        encoder = encoder_for(args, args.split)
        dataset = eval_dataset(args.data, args.split, args.root, args.image_size)
        path = embed(encoder, dataset, args.out, dtype=args.dtype, batch_size=args.batch_size, device=args.device,
                     num_workers=args.workers, progress=sys.stderr.isatty())
    dim = np.load(path, mmap_mode="r").shape[1]
    print(f"{len(dataset)} embeddings of {dim} dims ({args.dtype}) -> {path}\n"
          f"index: {path.parent / 'index.csv'}")


if __name__ == "__main__":
    main()
