"""Linear probe on the global average (grid 1) against grid-pooled feature maps (``--features grid --grid G``).

For each checkpoint and each G in ``--grids``: the encoder's last feature map average-pooled to G x G and
flattened (``ssl_rep.encoders.GridPooledEncoder``), then the linear probe (C chosen on a held-out 20% of the
training split, as ``ssl-probe`` does) and kNN@20. A random-init encoder of the same shape
(``NAME=random:resnet20?width=32``) is the row that says how much of a grid's gain the training earned;
``--checkpoint pixels`` adds the raw-pixel probe.
    python -m eval.probe_grid --checkpoint NAME=OUT/checkpoints/last.pt [...] --data fashion-mnist --grids 1,2,3
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from eval.cluster_spaces import add_checkpoint_args, checkpoints, parse_checkpoint_study, pixels, study_encoder
from eval.results_md import emit, table_section
from ssl_rep.cli.common import features_for
from ssl_rep.encoders import GridPooledEncoder
from ssl_rep.eval import KNNClassifier, LinearProbe


class EveryGrid(torch.nn.Module):
    """``GridPooledEncoder`` for several grids at once: the encoder runs once, its map is pooled per grid, and the
    pooled features are concatenated in ``grids`` order (``columns()`` gives each grid's slice)."""

    def __init__(self, encoder: torch.nn.Module, grids: list[int]):
        super().__init__()
        self.encoder, self.grids = encoder, grids
        self.num_features = sum(encoder.num_features * g * g for g in grids)

    def columns(self) -> list[slice]:
        ends = np.cumsum([self.encoder.num_features * g * g for g in self.grids])
        return [slice(end - self.encoder.num_features * g * g, end) for g, end in zip(self.grids, ends)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.encoder.feature_map(x)
        return torch.cat([GridPooledEncoder.pool(fmap, g) for g in self.grids], dim=1)


def probe_row(X, y, Xt, yt, device: str) -> dict:
    start = time.time()
    probe = LinearProbe(device=device).fit(X, y)
    return {"dim": int(X.shape[1]), "top1": probe.score(Xt, yt), "top5": probe.top_k_accuracy(Xt, yt, 5),
            "C": probe.C_, "knn20": KNNClassifier(20).fit(X, y).score(Xt, yt), "probe_seconds": time.time() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_args(parser, "a checkpoint or random:<encoder>")
    parser.add_argument("--grids", default="1,2", help="comma-separated cells per side (1: the global average)")
    args, opts = parse_checkpoint_study(parser, render)
    if args is None:
        return
    grids = [int(g) for g in args.grids.split(",") if g]
    if not grids or min(grids) < 1:
        parser.error(f"--grids takes positive cells per side, e.g. 1,2,3; got {args.grids!r}")
    rows = []
    for name, path in checkpoints(args):
        if name == "pixels":
            (X, y), (Xt, yt) = pixels(args.data, args.root, "train"), pixels(args.data, args.root, "test")
            rows.append({"checkpoint": name, "path": "", "grid": None, **probe_row(X, y, Xt, yt, args.device)})
            print(json.dumps(rows[-1]), flush=True)
            continue
        every = EveryGrid(study_encoder(path, args), grids)   # one pass over the images for all the grids
        X_all, y, _ = features_for(every, args.data, "train", opts)
        Xt_all, yt, _ = features_for(every, args.data, "test", opts)
        for grid, cols in zip(grids, every.columns()):
            X, Xt = np.ascontiguousarray(X_all[:, cols]), np.ascontiguousarray(Xt_all[:, cols])
            rows.append({"checkpoint": name, "path": path, "grid": grid, **probe_row(X, y, Xt, yt, args.device)})
            print(json.dumps(rows[-1]), flush=True)
    emit({"data": args.data, "rows": rows}, args, render)


def render(result: dict, command: str | None, machine_name: str | None = None) -> None:
    grid = lambda g: "–" if g is None else f"{g} x {g}"  # noqa: E731  (raw pixels have no map)
    lines = [f"| {r['checkpoint']} | {grid(r['grid'])} | {r['dim']} | {r['top1']:.4f} | {r['top5']:.4f} | "
             f"{r['knn20']:.4f} | {r['C']:.3g} |" for r in result["rows"]]
    table_section(f"probe-grid-{result['data']}", f"Linear probe: global average against grid-pooled maps "
                  f"({result['data']})", "python -m eval.probe_grid",
                  ["encoder", "grid", "features", "linear top-1", "top-5", "kNN@20", "C"], lines, command,
                  machine_name,
                  note="Grid 1 x 1 is the global average, the features every other table probes; G x G is the last "
                       "feature map average-pooled to G x G cells (`ssl-probe --features grid --grid G`), G*G times "
                       "as many features. C is chosen on a held-out 20% of the training split, then refitted on all "
                       "of it; the test split is scored once. " + result.get("note", ""))


if __name__ == "__main__":
    main()
