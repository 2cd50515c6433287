"""ssl-probe --checkpoint CKPT --data DATA [--out DIR]: linear probe (top-1/top-5) and kNN on frozen features."""
from __future__ import annotations

import argparse
import json
import time

from ..data.base import label_map, renumber
from ..eval import probe_features
from .common import EXPECTED_ERRORS, above_zero, add_encoder_and_data_args, default_out, features_name, \
    features_of, friendly_errors, encoder_for, setup_logging, split_dataset


def run_probe(args) -> dict:
    start = time.time()
    encoder = encoder_for(args, args.train_split)
    train = split_dataset(args.data, args.train_split, args, subset=args.train_subset)
    test = split_dataset(args.data, args.test_split, args, ten_crop=args.ten_crop)
    # a held-out folder without some training class numbers the others differently: count in the training split's
    mapping = label_map(getattr(test, "classes", None), getattr(train, "classes", None),
                        f"{args.data}: the {args.test_split} split")
    X, y = features_of(encoder, train, args)
    Xt, yt = features_of(encoder, test, args, ten_crop=args.ten_crop)
    yt = renumber(yt, mapping)
    if y is None or yt is None:
        raise ValueError(f"{args.data}: the {args.train_split if y is None else args.test_split} split has no labels; "
                         f"a probe needs labelled train and test splits")
    scores = probe_features(X, y, Xt, yt, C=args.C, knn_k=args.knn_k, device=args.device, seed=args.seed)
    return {"checkpoint": args.checkpoint, "data": args.data, "train_split": args.train_split,
            "test_split": args.test_split, "quantize": args.quantize, "features": features_name(args), **scores,
            "seconds": time.time() - start}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssl-probe", description="Linear probe and kNN on frozen features.")
    add_encoder_and_data_args(parser)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--C", type=above_zero, default=None,
                        help="fixed inverse regularisation (default: chosen on a held-out 20%%)")
    parser.add_argument("--knn-k", default="20,200", help="comma-separated k values for kNN")
    parser.add_argument("--ten-crop", action="store_true", help="average features over 10 crops at test time")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="fit the probe on a fixed random subset of this many training images")
    args = parser.parse_args(argv)
    if args.train_subset is not None and args.train_subset < 1:
        parser.error(f"--train-subset takes a number of training images, at least 1; got {args.train_subset}")
    args.knn_k = [int(k) for k in args.knn_k.split(",") if k]
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    with friendly_errors("ssl-probe", *EXPECTED_ERRORS):
        result = run_probe(args)
    out = default_out(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=2))
    knn = "  ".join(f"kNN@{k} {v:.4f}" for k, v in result["knn"].items())
    print(f"{args.data}: linear probe top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  (C={result['C']:.3g})  "
          f"{knn}\nwrote {out / 'probe.json'}")


if __name__ == "__main__":
    main()
