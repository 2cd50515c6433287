"""ssl-cluster --checkpoint CKPT --data DATA [--methods ...] --out DIR: clustering scores and an HTML report."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2 as T

from ..data.folder import ImageFolderDataset
from ..eval import CLUSTER_METHODS, cluster_features
from ..eval.api import DENSITY_PCA
from ..eval.cluster import UMAP_NEIGHBORS
from ..eval.embeddings import sample_names
from ..eval.report import write_report
from .common import EXPECTED_ERRORS, above_zero, add_encoder_and_data_args, at_least, default_out, features_for, \
    features_name, friendly_errors, image_getter, encoder_for, run_folder, setup_logging


def autoencoder_reconstructions(checkpoint: str, dataset, n: int = 10):
    """(originals, reconstructions) as uint8 images when CKPT is an autoencoder training checkpoint."""
    if checkpoint.startswith("random:") or not checkpoint.endswith(".pt"):
        return None
    from ..methods import METHODS, create_method
    from ..train.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(checkpoint)
    except Exception:  # encoder.pt or a foreign file: no method to reconstruct with
        return None
    method_cfg = dict(state["config"]["method"])
    name = method_cfg.pop("name", None)
    if not hasattr(METHODS.get(name), "reconstructions"):   # only methods that reconstruct images
        return None
    from ..encoders import create_encoder

    enc_cfg = dict(state["config"]["encoder"])
    x = torch.stack([dataset[i][0] for i in range(n)])
    method_cfg.setdefault("image_size", x.shape[-1])
    method = create_method(name, create_encoder(enc_cfg.pop("name"), **enc_cfg), **method_cfg)
    method.load_state_dict(state["model"])
    originals, recon = method.reconstructions(x)
    norm = next((t for t in getattr(dataset.transform, "transforms", []) if isinstance(t, T.Normalize)), None)
    mean = torch.tensor(norm.mean if norm else (0.0,) * 3).view(1, 3, 1, 1)
    std = torch.tensor(norm.std if norm else (1.0,) * 3).view(1, 3, 1, 1)
    to_uint8 = lambda t: ((t * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    return to_uint8(originals), to_uint8(recon)


def run_metrics(checkpoint: str) -> Path | None:
    """The ``metrics.jsonl`` of the run a checkpoint belongs to (OUT/encoder.pt, OUT/checkpoints/*.pt)."""
    if ":" in checkpoint.split("/")[0]:   # random:..., untrained:...
        return None
    out = run_folder(checkpoint)
    return out / "metrics.jsonl" if (out / "metrics.jsonl").is_file() else None


def run_cluster(args) -> tuple[dict, dict, np.ndarray, np.ndarray | None, object]:
    encoder = encoder_for(args, args.split)
    X, y, dataset = features_for(encoder, args.data, args.split, args)
    results, labels = cluster_features(X, y, args.methods, n_clusters=args.n_clusters, pca=args.pca, l2=args.l2,
                                       whiten=args.whiten, umap=args.umap, seed=args.seed,
                                       max_samples=args.max_samples, max_memory_gb=args.max_memory_gb,
                                       umap_neighbors=args.umap_neighbors, repeats=args.repeats,
                                       n_init=args.n_init)
    for method, r in results.items():
        if "error" in r:
            print(f"  {method:14s} skipped: {r['error']}")
            continue
        scores = r["scores"]
        shown = "  ".join(f"{k} {scores[k]:.4f}" for k in ("acc", "nmi", "ari", "purity", "silhouette")
                         if k in scores)
        print(f"  {method:14s} {shown}  clusters {scores['n_clusters']}  ({r['seconds']:.1f}s)"
              + (f"  seed {args.seed}" if "over_seeds" in r else ""))
        if "over_seeds" in r:
            spread = r["over_seeds"]
            shown = "  ".join(f"{k} {spread[k]['mean']:.4f} ({spread[k]['min']:.4f}-{spread[k]['max']:.4f})"
                              for k in ("acc", "nmi", "silhouette") if k in spread)
            print(f"  {'':14s} mean of seeds {', '.join(map(str, spread['seeds']))}: {shown}")
    return results, labels, X, y, dataset


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssl-cluster", description="Cluster frozen features and write a report.")
    add_encoder_and_data_args(parser)
    parser.add_argument("--split", default="test")
    parser.add_argument("--methods", default=",".join(CLUSTER_METHODS),
                        help=f"comma-separated, from {', '.join(CLUSTER_METHODS)}")
    parser.add_argument("--n-clusters", type=at_least(1), default=None, help="default: the number of classes (else 10)")
    parser.add_argument("--pca", type=at_least(1), default=None,
                        help=f"PCA dimensions before clustering (default: none; {DENSITY_PCA} for meanshift/dbscan)")
    parser.add_argument("--l2", action="store_true", help="L2-normalise features before clustering")
    parser.add_argument("--whiten", type=int, default=None, metavar="DIM",
                        help="standardise each feature, PCA-whiten to DIM dimensions, L2-normalise (as retrieval "
                             "treats pooled descriptors); e.g. --whiten 20 for CPC's mean readout")
    parser.add_argument("--umap", type=at_least(1), default=None, metavar="DIM",
                        help="UMAP to DIM dimensions (min_dist 0) after --l2/--pca/--whiten, before every method; "
                             "e.g. --l2 --umap 10 lifts k-means on SimCLR features by 4-7 points of ACC")
    parser.add_argument("--umap-neighbors", type=at_least(2), default=UMAP_NEIGHBORS, metavar="K",
                        help=f"neighbours UMAP keeps per point (default {UMAP_NEIGHBORS}, UMAP's; N2D used 20 on "
                             "Fashion-MNIST)")
    parser.add_argument("--max-samples", type=at_least(1), default=None,
                        help="cluster a random subsample and assign the rest to the nearest (for O(n^2) methods)")
    parser.add_argument("--max-memory-gb", type=above_zero, default=4.0, help="refuse runs estimated above this")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="cluster R times, seeds --seed .. --seed+R-1 (UMAP too), and report each score's mean "
                             "and range; the report's clusters are --seed's")
    parser.add_argument("--n-init", type=int, default=None, metavar="N",
                        help="starts of k-means (seedings, the lowest inertia kept; default 3) and of the GMM "
                             "(initialisations, the most likely kept; default 1)")
    parser.add_argument("--compare", action="append", default=[], metavar="CHECKPOINT",
                        help="also cluster these encoders' features the same way (a checkpoint, random:<encoder>, "
                             "untrained:<checkpoint> or pixels; repeatable): the report sets them side by side")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in CLUSTER_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(CLUSTER_METHODS)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: cluster at least once")
    if args.n_init is not None and args.n_init < 1:
        parser.error(f"--n-init {args.n_init}: start each method at least once")
    if args.whiten is not None and args.whiten < 1:
        parser.error(f"--whiten {args.whiten}: whiten to at least 1 dimension")
    if args.whiten and args.pca:   # before the features are extracted
        parser.error(f"--pca {args.pca} and --whiten {args.whiten} both project the features; give one of them")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging()
    with friendly_errors("ssl-cluster", *EXPECTED_ERRORS):
        results, labels, X, y, dataset = run_cluster(args)
        out = default_out(args)
        comparison = {args.checkpoint: {"results": results, "features": X}}
        for spec in args.compare:
            print(f"{spec}:")
            other, _, other_X, _, _ = run_cluster(argparse.Namespace(**{**vars(args), "checkpoint": spec}))
            comparison[spec] = {"results": other, "features": other_X}
        out.mkdir(parents=True, exist_ok=True)
        (out / "clusters.json").write_text(json.dumps(
            {"checkpoint": args.checkpoint, "data": args.data, "split": args.split, "quantize": args.quantize,
             "features": features_name(args), "methods": results,
             **({"compare": {spec: comparison[spec]["results"] for spec in args.compare}} if args.compare else {})},
            indent=2))
        recon = autoencoder_reconstructions(args.checkpoint, dataset)
        # a folder: the one it read (a plain folder is read whole, whatever --split says)
        data = str(dataset.root) if isinstance(dataset, ImageFolderDataset) else f"{args.data}/{args.split}"
        report = write_report(out / "report.html", results, X, y, labels, image_at=image_getter(dataset),
                              reconstructions=recon, title=f"Clusters of {args.checkpoint} on {data}",
                              meta={"checkpoint": args.checkpoint, "data": data,
                                    "features": features_name(args), "points": len(X), "feature dim": X.shape[1],
                                    **({"whitened": f"{args.whiten} dims, L2-normalised"} if args.whiten else {}),
                                    **({"UMAP": f"{args.umap} dims, {args.umap_neighbors} neighbours"}
                                       if args.umap else {}),
                                    **({"starts": f"{args.n_init} (k-means, GMM)"} if args.n_init else {}),
                                    **({"seeds": f"{args.seed}-{args.seed + args.repeats - 1} (clusters shown: seed "
                                                 f"{args.seed}; each score's mean and range: clusters.json)"}
                                       if args.repeats > 1 else {})},
                              class_names=getattr(dataset, "classes", None), seed=args.seed,
                              umap_map=bool(args.umap), metrics_path=run_metrics(args.checkpoint),
                              comparison=comparison if args.compare else None,
                              sample_names=[Path(n).name for n in sample_names(dataset)]
                              if getattr(dataset, "samples", None) is not None else None)
    print(f"wrote {out / 'clusters.json'} and {report}")


if __name__ == "__main__":
    main()
