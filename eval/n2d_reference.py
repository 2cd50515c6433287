"""N2D's own autoencoder, read by the same UMAP + GMM as the fashion-mnist-ae-cpc table's N2D column.

N2D (McConville et al. 2019, arXiv 1908.05968; its autoencoder is DEC's, Xie et al. 2016) trains a fully connected
autoencoder d-500-500-2000-10 (ReLU between layers, a linear 10-value code, a mirrored decoder, MSE on pixels in
[0, 1], Adam, batch 256, no augmentation), then clusters the code: UMAP to as many dimensions as clusters (20
neighbours, min_dist 0) -> a full-covariance Gaussian mixture. This script trains that autoencoder on the gray
pixels of an in-memory dataset and scores the pipeline over several UMAP / GMM seeds, so the library's convolutional
autoencoders can be compared with the paper's own model under one protocol: what the model contributes, and what one
seed moves.

    python -m eval.n2d_reference --data fashion-mnist --root $FM --epochs 100 --json eval/results/n2d-reference.json

``--shift`` / ``--rotate`` train on randomly translated / rotated images (DEC-DA's augmentation, Guo et al. 2018: the
autoencoder rebuilds the augmented image it reads); clustering always reads the images as they are.

``--fit train`` (default) trains on the training split and clusters the test split; ``--fit all`` trains on both and
clusters all of them (N2D's protocol). ``--save`` keeps the encoder; ``--load`` scores a saved one without training
(``--epochs`` then only labels the result).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ssl_rep import build_dataset
from ssl_rep.encoders import fully_connected
from ssl_rep.encoders.mlp import N2D_HIDDEN as HIDDEN

from .reproduce import n2d_scores
from .results_md import command_line, git_rev, machine

CODE = 10


def gray_pixels(dataset) -> np.ndarray:
    """``(N, H * W)`` float32 in [0, 1] from an in-memory dataset's uint8 ``(N, H, W, 3)`` images (channel 0: the
    datasets this reads are gray, stored as three equal channels)."""
    images = np.asarray(dataset.images)
    if images.ndim != 4 or not (images[..., :1] == images).all():
        raise ValueError(f"{dataset.name}: n2d_reference reads gray images stored as three equal channels")
    return images[..., 0].reshape(len(images), -1).astype(np.float32) / 255.0


def n2d_encoder(d: int) -> nn.Sequential:
    """N2D's encoder for ``d`` input values: d-500-500-2000-10 (its decoder is the mirror, built in ``train``)."""
    return fully_connected((d, *HIDDEN, CODE))


def augment(x: torch.Tensor, shift: float, rotate: float) -> torch.Tensor:
    """Each flattened square image of ``x`` ``(B, d)`` moved by up to ``shift`` pixels along each axis and turned by
    up to ``rotate`` degrees (uniform, independently per image; zeros fill what comes into view)."""
    if not shift and not rotate:
        return x
    side = int(round(x.shape[1] ** 0.5))
    b = len(x)
    angle = (torch.rand(b, device=x.device) * 2 - 1) * np.deg2rad(rotate)
    move = (torch.rand(b, 2, device=x.device) * 2 - 1) * shift * 2 / side   # pixels -> [-1, 1] grid units
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, (b, 1, side, side), align_corners=False)
    return F.grid_sample(x.view(b, 1, side, side), grid, align_corners=False).view(b, -1)


def train(X: torch.Tensor, epochs: int, seed: int, precision: str, batch_size: int = 256, lr: float = 1e-3,
          at=(), on_epoch=None, shift: float = 0.0, rotate: float = 0.0):
    """The autoencoder trained on ``X`` ``(N, d)`` (on ``X``'s device), each batch through :func:`augment`; returns
    (encoder, per-epoch mean losses, seconds of training). ``on_epoch(epoch, encoder)`` runs after each epoch in
    ``at`` (its time is not counted)."""
    torch.manual_seed(seed)
    encoder, decoder = n2d_encoder(X.shape[1]), fully_connected((CODE, *HIDDEN[::-1], X.shape[1]))
    model = nn.Sequential(encoder, decoder).to(X.device)
    opt = torch.optim.Adam(model.parameters(), lr)
    losses, seconds = [], 0.0
    bar = tqdm(range(1, epochs + 1), desc="autoencoder", unit="epoch", disable=not sys.stderr.isatty())
    for epoch in bar:
        start = time.time()
        order, total = torch.randperm(len(X), device=X.device), torch.zeros((), device=X.device)
        for i in range(0, len(X), batch_size):
            x = augment(X[order[i:i + batch_size]], shift, rotate)
            with torch.autocast(X.device.type, torch.bfloat16, enabled=precision == "bf16"):
                out = model(x)
            loss = ((out.float() - x) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(x)
        losses.append(float(total) / len(X))
        seconds += time.time() - start
        bar.set_postfix(loss=f"{losses[-1]:.5f}")
        if epoch in at:   # printed as it goes: a run stopped early keeps its curve in the log
            print(f"epoch {epoch}, loss {losses[-1]:.5f}", flush=True)
            if on_epoch is not None:
                on_epoch(epoch, encoder.eval())
                encoder.train()
    return encoder.eval(), losses, seconds


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--root", default=None)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--fit", choices=("train", "all"), default="train")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0, help="the autoencoder's seed")
    ap.add_argument("--shift", type=float, default=0.0, help="train on images moved by up to this many pixels")
    ap.add_argument("--rotate", type=float, default=0.0, help="train on images turned by up to this many degrees")
    ap.add_argument("--cluster-seeds", default="0,1,2",
                    help="UMAP / GMM seeds, comma-separated; '' trains (and --save) without scoring")
    ap.add_argument("--gmm-starts", type=int, default=1,
                    help="fit the GMM this many times and keep the most likely (N2D: 1; ssl-cluster --n-init)")
    ap.add_argument("--score-at", default="", help="also score after these epochs, comma-separated (a curve)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save", type=Path, default=None, help="write the trained encoder's state_dict here")
    ap.add_argument("--load", type=Path, default=None, help="score this saved encoder (--save's file), no training")
    args = ap.parse_args(argv)
    if args.gmm_starts < 1:
        ap.error(f"--gmm-starts {args.gmm_starts}: fit the GMM at least once")
    commit = git_rev()   # now: the code that runs, whatever the checkout holds when a long run ends
    train_ds = build_dataset(args.data, split="train", root=args.root)
    test_ds = build_dataset(args.data, split="test", root=args.root)
    X, Xt = gray_pixels(train_ds), gray_pixels(test_ds)
    y, yt = np.asarray(train_ds.labels), np.asarray(test_ds.labels)
    fit_X = np.concatenate([X, Xt]) if args.fit == "all" else X
    score_X, score_y = (fit_X, np.concatenate([y, yt])) if args.fit == "all" else (Xt, yt)
    device = torch.device(args.device)
    k, seeds = len(np.unique(score_y)), [int(s) for s in args.cluster_seeds.split(",") if s.strip()]
    curve = {}

    def score(epoch, encoder) -> list[dict]:
        if not seeds:
            return []
        with torch.no_grad():
            code = torch.cat([encoder(torch.from_numpy(part).to(device)).cpu()
                              for part in np.array_split(score_X, max(1, len(score_X) // 10_000))]).numpy()
        runs = []
        for s in seeds:
            scores = n2d_scores(code, score_y, k, seed=s, n_init=args.gmm_starts)
            runs.append({"seed": s, "acc": scores["acc"], "nmi": scores["nmi"]})
            print(f"epoch {epoch}, UMAP + GMM seed {s}: ACC {scores['acc']:.4f} NMI {scores['nmi']:.4f}", flush=True)
        curve[str(epoch)] = {"mean_acc": float(np.mean([r["acc"] for r in runs])),
                             "mean_nmi": float(np.mean([r["nmi"] for r in runs])), "runs": runs}
        return runs

    at = {int(e) for e in args.score_at.split(",") if e.strip()} - {args.epochs}
    if args.load:
        encoder, losses, seconds = n2d_encoder(X.shape[1]).to(device).eval(), [], 0.0
        encoder.load_state_dict(torch.load(args.load, map_location=device, weights_only=True))
    else:
        encoder, losses, seconds = train(torch.from_numpy(fit_X).to(device), args.epochs, args.seed, args.precision,
                                         at=at, on_epoch=score, shift=args.shift, rotate=args.rotate)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(encoder.state_dict(), args.save)
    runs = score(args.epochs, encoder)
    result = {"command": command_line(), "machine": machine(), "commit": commit,
              "data": args.data, "fit": args.fit, "epochs": args.epochs, "precision": args.precision,
              "seed": args.seed, "shift": args.shift, "rotate": args.rotate, "points": len(score_X),
              "gmm_starts": args.gmm_starts,
              "train_minutes": round(seconds / 60, 1),
              "loss": {str(e + 1): round(v, 5) for e, v in enumerate(losses)
                       if (e + 1) % 10 == 0 or e in (0, len(losses) - 1)},
              "runs": runs, **{k: v for k, v in curve.get(str(args.epochs), {}).items() if k != "runs"},
              "curve": curve}
    if runs:
        print(f"mean over seeds {seeds}: ACC {result['mean_acc']:.4f} NMI {result['mean_nmi']:.4f} "
              f"({args.epochs} epochs, {result['train_minutes']} min)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
