"""k-means: which feature space of a SimCLR model clusters best? For each checkpoint, k-means with 5
seeds on the test split in each space: the backbone (raw, L2, standardised, PCA-16 + L2, PCA-whitened
+ L2), the projection head's hidden layer (raw, L2) and its output (raw, L2; ``--features projection``).
``--umap DIM`` adds the backbone and hidden layer after L2 + UMAP (``ssl-cluster --l2 --umap DIM``),
refitted per seed; ``--whiten D,D`` adds the backbone standardised, whitened to D dimensions and L2-normalised
(``ssl-cluster --whiten D``); ``--checkpoint pixels`` adds the raw-pixel baseline (its "backbone" is the pixels),
``untrained:PATH`` a checkpoint's architecture untrained.
    python -m eval.cluster_spaces --checkpoint NAME=OUT/checkpoints/last.pt [...] --data fashion-mnist
"""
from __future__ import annotations

import argparse
import json
import re
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch

from eval.results_md import emit, parse_or_render, table_section
from ssl_rep.cli.common import features_for, set_patch_reading
from ssl_rep.data import build_dataset
from ssl_rep.encoders.io import ENCODER_FORMAT, encoder_from, projection_head, safe_load
from ssl_rep.eval import cluster, clustering_scores, preprocess
from ssl_rep.eval.cluster import whiten_features
from ssl_rep.eval.inputs import resolve_encoder


def spaces(X: np.ndarray, head: torch.nn.Module | None, umap: int | None = None,
           whiten: tuple[int, ...] = ()) -> dict[str, tuple]:
    """space name -> (features, UMAP dimensions to reduce them to per seed, or None)."""
    from sklearn.decomposition import PCA
    l2 = lambda F: preprocess(F, l2_normalize=True)  # noqa: E731
    out = {"backbone": X, "backbone, L2": l2(X), "backbone, standardised": (X - X.mean(0)) / (X.std(0) + 1e-6),
           "backbone, PCA-16 + L2": l2(preprocess(X, pca=16)),
           "backbone, PCA-whitened + L2": l2(PCA(whiten=True, random_state=0).fit_transform(X)),
           **{f"backbone, standardised + whitened-{d} + L2": whiten_features(X, d) for d in whiten}}
    if head is not None:
        with torch.no_grad():
            hidden_t = head[:3](torch.from_numpy(X))     # Linear -> BatchNorm -> ReLU
            hidden, Z = hidden_t.numpy(), head[3:](hidden_t).numpy()
        out.update({"head hidden layer": hidden, "head hidden layer, L2": l2(hidden),
                    "projection": Z, "projection, L2": l2(Z)})
    out = {name: (F, None) for name, F in out.items()}
    if umap:
        for name in ("backbone, L2", "head hidden layer, L2"):
            if name in out:
                out[f"{name} + UMAP-{umap}"] = (out[name][0], umap)
    return out


def pixels(data: str, root, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = build_dataset(data, split=split, root=root)
    return np.asarray(ds.images, np.float32).reshape(len(ds), -1) / 255, np.asarray(ds.labels)


def add_checkpoint_args(parser, what: str) -> None:
    """The arguments of a study over checkpoints: which ones (``NAME=PATH``, or ``pixels``), data, device."""
    parser.add_argument("--checkpoint", action="append", default=[],
                        help=f"NAME=PATH of {what} (repeatable); 'pixels' for raw pixels")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--root", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default="none", help="feature cache (default none: extract afresh)")
    parser.add_argument("--patch-stride", type=int, default=None, help="as ssl-probe's, for CPC checkpoints")
    parser.add_argument("--patch-crop", type=int, default=None, help="as ssl-probe's, for CPC checkpoints")


def parse_checkpoint_study(parser, render) -> tuple[Namespace | None, Namespace | None]:
    """``parse_or_render``, then at least one ``--checkpoint``; also the options ``features_for`` extracts with
    (``--cache-dir``). ``(None, None)`` after ``--render``."""
    args = parse_or_render(parser, render)
    if args is None:
        return None, None
    if not args.checkpoint:
        parser.error("name at least one --checkpoint NAME=PATH")
    return args, Namespace(root=args.root, image_size=None, seed=0, cache_dir=args.cache_dir, batch_size=512,
                           device=args.device, workers=2)


def checkpoints(args) -> list[tuple[str, str]]:
    """``(name, path)`` of each ``--checkpoint NAME=PATH`` (path '' for ``pixels``)."""
    return [spec.partition("=")[::2] for spec in args.checkpoint]


def study_encoder(path: str, args) -> torch.nn.Module:
    """The encoder ``path`` names (a checkpoint, ``untrained:``, ``random:``), read as ``--patch-stride`` /
    ``--patch-crop`` say."""
    encoder = resolve_encoder(path)
    set_patch_reading(encoder, args.patch_stride, args.patch_crop)
    return encoder


def encoder_and_head(path: str, args) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The backbone and, where ``path`` holds one (a SimCLR training checkpoint), the projection head; an
    ``encoder.pt`` (a run copied off a GPU machine without its optimiser state, say), a method without a head or an
    ``untrained:`` / ``random:`` encoder gives the backbone spaces only."""
    if path.split(":")[0] in ("untrained", "random"):
        return study_encoder(path, args), None
    obj = safe_load(path)   # read once, for the backbone and the head
    has_head = obj.get("format") != ENCODER_FORMAT and any(k.startswith("head.") for k in obj["model"])
    head = projection_head(obj, Path(path)).cpu().eval() if has_head else None   # CPC, autoencoders: none
    encoder = encoder_from(obj, Path(path))
    set_patch_reading(encoder, args.patch_stride, args.patch_crop)
    return encoder, head


def main() -> None:
    parser = argparse.ArgumentParser()
    add_checkpoint_args(parser, "a SimCLR training checkpoint (OUT/encoder.pt: backbone spaces only)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--umap", type=int, default=None, metavar="DIM",
                        help="also cluster the L2 backbone and hidden layer after UMAP to DIM dimensions")
    parser.add_argument("--whiten", default="", metavar="D,D",
                        help="also cluster the backbone whitened to each D dimensions (ssl-cluster --whiten D)")
    parser.add_argument("--study", default=None,
                        help="name of a RESULTS.md section of its own for this study (default: the shared one)")
    args, opts = parse_checkpoint_study(parser, render)
    if args is None:
        return
    parts = [d.strip() for d in args.whiten.split(",") if d.strip()]
    if not all(d.isdigit() and int(d) > 0 for d in parts):
        parser.error(f"--whiten takes positive dimensions, e.g. 10,20; got {args.whiten!r}")
    whiten = tuple(int(d) for d in parts)
    rows = []
    for name, path in checkpoints(args):
        if name == "pixels":
            X, y = pixels(args.data, args.root, args.split)
            head = None
        else:
            encoder, head = encoder_and_head(path, args)
            X, y, _ = features_for(encoder, args.data, args.split, opts)
        for space, (F, umap) in spaces(np.asarray(X, np.float32), head, args.umap, whiten).items():
            scores = [clustering_scores(y, cluster(preprocess(F, umap=umap, seed=s) if umap else F, "kmeans",
                                                   n_clusters=len(np.unique(y)), seed=s))
                      for s in range(args.seeds)]
            row = {"checkpoint": name, "path": path, "space": space, "dim": umap or int(F.shape[1]),
                   "acc": [s["acc"] for s in scores], "nmi": [s["nmi"] for s in scores]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    emit({"data": args.data, "split": args.split, "rows": rows, **({"study": args.study} if args.study else {})},
         args, render)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render(result: dict, command: str | None, machine_name: str | None = None) -> None:
    names = list(dict.fromkeys(r["checkpoint"] for r in result["rows"]))
    by = {(r["checkpoint"], r["space"]): r for r in result["rows"]}
    lines = []
    for space in dict.fromkeys(r["space"] for r in result["rows"]):
        cells = []
        for name in names:
            r = by.get((name, space))
            cells.append(f"{np.mean(r['acc']):.3f} ± {np.std(r['acc']):.3f} / {np.mean(r['nmi']):.3f}" if r else "–")
        lines.append(f"| {space} | " + " | ".join(cells) + " |")
    n = len(result["rows"][0]["acc"])
    umap = any("UMAP" in r["space"] for r in result["rows"])   # a study of its own, beside the plain one
    study = result.get("study")   # a named study has a section of its own
    key = f"cluster-spaces-{result['data']}" + ("-umap" if umap else "") + (f"-{slug(study)}" if study else "")
    table_section(key, f"k-means{' with UMAP' if umap else ''}: which feature space ({result['data']}"
                       + (f", {study})" if study else ")"),
                  "python -m eval.cluster_spaces",
                  ["space", *[f"{name}: ACC mean ± sd / NMI" for name in names]], lines, command, machine_name,
                  note=f"k-means (ssl_rep's: faiss, k-means++, best of 3 restarts) with {n} seeds on the "
                       f"{result['data']} {result['split']} split, k = the number of classes. "
                       + ("'+ UMAP-d': `ssl-cluster --l2 --umap d` (min_dist 0, 15 neighbours), UMAP refitted with "
                          "each seed, so its spread is in the ± . " if umap else "")
                       + ("'standardised + whitened-d + L2': `ssl-cluster --whiten d`. "
                          if any("whitened-" in r["space"] for r in result["rows"]) else "")
                       + ("In the pixels column 'backbone' means the raw pixels (/255). "
                          if "pixels" in names else "")
                       + result.get("note", ""))


if __name__ == "__main__":
    main()
