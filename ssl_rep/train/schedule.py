"""Learning-rate schedules as one pure function of the step."""
from __future__ import annotations

import math

from .config import ScheduleConfig


def lr_at(step: int, base_lr: float, total_steps: int, schedule: ScheduleConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warmup from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps``, then
    ``cosine`` (half a cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``), ``step``
    (multiply by ``gamma`` at each milestone step) or ``constant``.
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule.name == "constant":
        return base_lr
    if schedule.name == "step":
        return base_lr * schedule.gamma ** sum(step >= m for m in schedule.milestones)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
