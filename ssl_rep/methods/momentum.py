"""The momentum teacher shared by BYOL, MoCo and DINO: a copy of the online network that follows it
by an exponential moving average (EMA), updated after each optimiser step through ``after_step``.

The teacher is a sub-module of its method, so checkpoints hold it and resume stays exact; its
parameters need no gradient, so the optimiser never sees them.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """BYOL's schedule (Grill et al. 2020, sec. 3.2): ``final - (final - base) * (cos(pi k / K) + 1) / 2``
    at step ``k`` of ``K``: ``base`` at the start, ``final`` at the end. A pure function of the step."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters take no gradient: the teacher's starting point."""
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter. Buffers
    (BatchNorm statistics) are the teacher's own: it runs in training mode on its own batches."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError(f"ema_update: the teacher has {len(t_params)} parameters, the student {len(s_params)}")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1 - momentum)
