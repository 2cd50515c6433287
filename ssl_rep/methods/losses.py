"""Contrastive losses shared by the methods: NT-Xent (SimCLR) and InfoNCE (CPC).

Both are a cross-entropy over similarity logits where each anchor must pick out its positive
among all candidates; they differ in what the candidates are and how similarity is measured.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def info_nce(predictions: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
             gather_distributed: bool = False) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018, eq. 4) with dot-product scores.

    predictions, targets: ``(M, D)``. Row ``i`` of ``predictions`` must pick ``targets[i]`` among
    all ``M`` targets (the other ``M - 1`` are its negatives). Returns the mean over the ``M`` rows
    of ``-log softmax(predictions @ targets.T / temperature)[i, i]``; at random initialisation it is
    close to ``log(M)``. With ``gather_distributed`` under torch.distributed, the targets of every
    process are candidates (global negatives; gradients flow back to each process's own targets).
    """
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise ValueError(f"info_nce: predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must both be (M, D)")
    candidates, offset = _gather_with_grad(targets) if gather_distributed else (targets, 0)
    logits = predictions @ candidates.T / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device) + offset)


def _gather_with_grad(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' ``z`` concatenated (gradients flow back to each rank's own part), and this
    rank's offset in it. Without an initialised process group: ``(z, 0)``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z, 0
    from torch.distributed.nn.functional import all_gather
    return torch.cat(all_gather(z)), dist.get_rank() * len(z)


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5,
            gather_distributed: bool = True) -> torch.Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

    z0, z1: ``(N, D)``; ``z0[i]`` and ``z1[i]`` are two views of image ``i``. Similarity is cosine.
    Each of the 2N anchors has one positive (the other view) and 2N - 2 negatives (both views of
    every other image); its own similarity is excluded. Returns the mean loss over all 2N anchors.
    Under torch.distributed the candidates are gathered from every process (global negatives).
    """
    if z0.shape != z1.shape or z0.ndim != 2:
        raise ValueError(f"nt_xent: z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)} must both be (N, D)")
    n = len(z0)
    anchors = F.normalize(torch.cat([z0, z1]), dim=1)                       # (2N, D): views 0 then 1
    local0, local1 = anchors[:n], anchors[n:]
    gather = _gather_with_grad if gather_distributed else (lambda z: (z, 0))
    all0, offset = gather(local0)
    all1, _ = gather(local1)
    total = len(all0)
    candidates = torch.cat([all0, all1])                                    # (2T, D)
    logits = anchors @ candidates.T / temperature                           # (2N, 2T)
    idx = torch.arange(n, device=z0.device) + offset
    self_index = torch.cat([idx, idx + total])
    positive = torch.cat([idx + total, idx])
    logits = logits.masked_fill(F.one_hot(self_index, 2 * total).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)
