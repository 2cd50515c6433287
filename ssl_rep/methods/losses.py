"""The methods' losses, as pure functions of their tensors.

Contrastive (a cross-entropy where each anchor picks out its positive among candidates): ``nt_xent``
(SimCLR), ``info_nce`` (CPC), ``moco_loss`` (MoCo v2's queue or v3's in-batch keys). Non-contrastive:
``byol_loss`` (BYOL, SimSiam), ``barlow_twins_loss``, ``vicreg_loss``, ``dino_loss``. With
``gather_distributed`` under torch.distributed, the batch statistics or candidates come from every
process, so one step equals a single process with the global batch.
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
    return F.cross_entropy(*info_nce_logits(predictions, targets, temperature, gather_distributed))


def info_nce_logits(predictions: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                    gather_distributed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`info_nce` classifies: the scores ``(M, candidates)`` in float32 and each row's positive
    ``(M,)``, so a caller can take the loss and the prediction accuracy from one product."""
    if predictions.shape != targets.shape or predictions.ndim != 2:
        raise ValueError(f"info_nce: predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must both be (M, D)")
    candidates, offset = _gather_with_grad(targets) if gather_distributed else (targets, 0)
    # Scores in float32 even under autocast: unnormalised dot products are large, and bf16's 8-bit mantissa
    # rounds their differences away, which made CPC diverge in bf16
    dtype = torch.promote_types(predictions.dtype, torch.float32)   # float64 stays float64
    with torch.autocast(predictions.device.type, enabled=False):
        logits = predictions.to(dtype) @ candidates.to(dtype).T / temperature
    return logits, torch.arange(len(logits), device=logits.device) + offset


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


def _gather(z: torch.Tensor, gather_distributed: bool) -> torch.Tensor:
    return _gather_with_grad(z)[0] if gather_distributed else z


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, eq. 2): the mean over the batch of
    ``2 - 2 cos(p_i, z_i)``, the squared distance of the L2-normalised vectors.

    p: ``(N, D)`` the online network's predictions; z: ``(N, D)`` the target's projections, treated
    as a constant (no gradient reaches them). SimSiam (Chen & He 2021) uses the same loss (its
    negative cosine, up to the constant 2 and factor 2)."""
    if p.shape != z.shape or p.ndim != 2:
        raise ValueError(f"byol_loss: p {tuple(p.shape)} and z {tuple(z.shape)} must both be (N, D)")
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each column to mean 0 and (biased) variance 1 over the batch, as BatchNorm1d without affine."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 5e-3,
                      gather_distributed: bool = True) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, eq. 1): with ``C`` the ``(D, D)`` cross-correlation of the
    batch-standardised embeddings, ``sum_i (1 - C_ii)^2 + lambda_ * sum_{i != j} C_ij^2``.

    z1, z2: ``(N, D)``, two views' embeddings (the projector's output)."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"barlow_twins_loss: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (N, D)")
    a, b = _gather(z1, gather_distributed), _gather(z2, gather_distributed)
    c = _standardise(a).T @ _standardise(b) / len(a)
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambda_ * off_diag


def _off_diagonal_square_sum(m: torch.Tensor) -> torch.Tensor:
    return m.pow(2).sum() - torch.diagonal(m).pow(2).sum()


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4, gather_distributed: bool = True) -> torch.Tensor:
    """VICReg (Bardes et al. 2022, eqs. 1-6): ``sim_weight * s + var_weight * v + cov_weight * c``.

    z1, z2: ``(N, D)``. ``s``: the mean squared distance between the two views (invariance).
    ``v``: per branch, the mean over dimensions of ``relu(1 - sqrt(Var(z_j) + eps))`` (unbiased
    variance), averaged over the branches. ``c``: per branch, the sum of the squared off-diagonal
    entries of the covariance matrix divided by ``D``, summed over the branches. Variance and
    covariance are over the global batch under torch.distributed."""
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"vicreg_loss: z1 {tuple(z1.shape)} and z2 {tuple(z2.shape)} must both be (N, D)")
    invariance = F.mse_loss(z1, z2)
    a, b = _gather(z1, gather_distributed), _gather(z2, gather_distributed)
    n, d = a.shape
    variance = sum(F.relu(1 - torch.sqrt(x.var(0) + eps)).mean() for x in (a, b)) / 2
    covariance = sum(_off_diagonal_square_sum((x - x.mean(0)).T @ (x - x.mean(0)) / (n - 1)) / d for x in (a, b))
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance


def dino_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    """DINO (Caron et al. 2021, eq. 3 and Algorithm 1): the cross-entropy ``-sum P_t log P_s`` of the
    centred, sharpened teacher against the student, averaged over every pair of different views.

    student_logits: ``(V_s, N, K)``, the student's outputs for ``V_s`` views (global views first);
    teacher_logits: ``(V_t, N, K)``, the teacher's for the first ``V_t <= V_s`` (global) views;
    center: ``(K,)``. ``P_t = softmax((t - center) / teacher_temp)`` (no gradient),
    ``P_s = softmax(s / student_temp)``. Pairs where the student and teacher see the same view are
    skipped."""
    if student_logits.ndim != 3 or teacher_logits.ndim != 3 or student_logits.shape[1:] != teacher_logits.shape[1:]:
        raise ValueError(f"dino_loss: student {tuple(student_logits.shape)} and teacher "
                         f"{tuple(teacher_logits.shape)} must be (V, N, K) with the same N and K")
    targets = F.softmax((teacher_logits.detach() - center) / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1)
    total, pairs = 0.0, 0
    for t in range(len(targets)):
        for s in range(len(log_probs)):
            if s != t:
                total = total + (-(targets[t] * log_probs[s]).sum(-1)).mean()
                pairs += 1
    if not pairs:
        raise ValueError("dino_loss: needs at least two views")
    return total / pairs


@torch.no_grad()
def dino_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's centre update: ``momentum * center + (1 - momentum) * mean`` of the teacher's outputs over
    views and the global batch. teacher_logits: ``(V, N, K)``; returns the new ``(K,)`` centre."""
    total = teacher_logits.float().sum(dim=(0, 1))
    count = torch.tensor(float(teacher_logits.shape[0] * teacher_logits.shape[1]), device=total.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        dist.all_reduce(count)
    return center * momentum + (total / count) * (1 - momentum)


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None = None, temperature: float = 0.2,
              gather_distributed: bool = True) -> torch.Tensor:
    """MoCo's InfoNCE (He et al. 2020, eq. 1; Chen et al. 2021): cosine logits over ``temperature``,
    ``k[i]`` the positive of ``q[i]``; the keys get no gradient (they come from the momentum encoder).

    q, k: ``(N, D)``. With ``queue`` ``(M, D)`` (MoCo v2) the negatives are its rows: the positive
    logit first, then ``M`` negatives. Without it (MoCo v3) the negatives are the other keys of the
    batch, gathered from every process under torch.distributed."""
    if q.shape != k.shape or q.ndim != 2:
        raise ValueError(f"moco_loss: q {tuple(q.shape)} and k {tuple(k.shape)} must both be (N, D)")
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    if queue is not None:
        if queue.ndim != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"moco_loss: queue {tuple(queue.shape)} must be (M, {q.shape[1]})")
        positive = (q * k).sum(1, keepdim=True)
        logits = torch.cat([positive, q @ F.normalize(queue.detach(), dim=1).T], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
    keys, offset = _gather_with_grad(k) if gather_distributed else (k, 0)
    logits = q @ keys.T / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device) + offset)
