"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, MethodOutput, MultiCropSpec
from .losses import dino_center, dino_loss
from .momentum import cosine_momentum, ema_update, momentum_copy

LOCAL = MultiCropSpec(0)   # the multi-crop defaults (DINO's)


class DINOHead(nn.Module):
    """``Linear -> GELU -> Linear -> GELU -> Linear`` to a ``bottleneck_dim`` vector, L2-normalised, then a
    weight-normalised ``Linear`` (no bias, norm fixed at 1) to ``out_dim`` prototypes' logits."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        self.prototypes = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.prototypes(F.normalize(self.mlp(h), dim=1))


class DINO(Method):
    """Self-distillation with no labels: the student matches the momentum teacher's centred, sharpened
    output distribution on the other views (:func:`~ssl_rep.methods.losses.dino_loss`).

    batch: ``([g0, g1, l0, ..., l_{M-1}], labels)``: two global views ``(B, 3, H, W)`` and, with
    ``local_crops = M > 0``, multi-crop's M small views ``(B, 3, h, h)`` (side ``local_size`` times the image's,
    from ``local_scale`` of its area; the global views then come from ``global_scale``). The teacher sees the global
    views only; the student every view. Teacher: a momentum copy of encoder + head, ``tau`` from ``momentum`` (0.996)
    to 1 on a cosine; the centre follows the teacher's batch mean with momentum ``center_momentum`` (every process's
    batch). ``warmup_teacher_temp``: the teacher's temperature starts there and rises linearly to ``teacher_temp``
    over the first ``teacher_temp_warmup`` of training (a fraction), as the paper's ViT runs do; None keeps it fixed.
    logs: ``loss``, ``teacher_entropy`` (nats; collapse to one prototype reads 0, to the uniform distribution
    ``log(out_dim)``).
    """

    name = "dino"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9,
                 momentum: float = 0.996, local_crops: int = 0, local_size: float = LOCAL.local_size,
                 local_scale: tuple = LOCAL.local_scale, global_scale: tuple = LOCAL.global_scale,
                 warmup_teacher_temp: float | None = None, teacher_temp_warmup: float = 0.3):
        super().__init__(encoder)
        if local_crops < 0:
            raise ValueError(f"local_crops must be >= 0, got {local_crops}")
        self.head = DINOHead(encoder.num_features, hidden_dim, bottleneck_dim, out_dim)
        self.teacher = momentum_copy(nn.ModuleDict({"encoder": encoder, "head": self.head}))
        self.student_temp, self.center_momentum = student_temp, center_momentum
        self.final_teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup = teacher_temp_warmup
        self.local_crops = local_crops
        self.momentum_base = momentum
        self.register_buffer("center", torch.zeros(out_dim))
        self.register_buffer("momentum", torch.tensor(momentum))
        self.register_buffer("teacher_temp", torch.tensor(
            teacher_temp if warmup_teacher_temp is None else warmup_teacher_temp))

    @classmethod
    def multi_crop(cls, options: dict):
        if not options.get("local_crops", 0):
            return None
        return MultiCropSpec(int(options["local_crops"]), float(options.get("local_size", LOCAL.local_size)),
                             tuple(options.get("local_scale", LOCAL.local_scale)),
                             tuple(options.get("global_scale", LOCAL.global_scale)))

    def forward(self, batch):
        views = self.images_of(batch)
        if not isinstance(views, (list, tuple)) or len(views) != 2 + self.local_crops:
            got = len(views) if isinstance(views, (list, tuple)) else 1
            raise ValueError(f"DINO with local_crops={self.local_crops} needs {2 + self.local_crops} views per image "
                             f"(2 global, then the local ones), got {got}")
        n, global_views = len(views[0]), torch.cat(views[:2])
        h = self.encoder(global_views)
        student = [self.head(h)]
        if self.local_crops:   # the small views in one pass of their own (another size)
            student.append(self.head(self.encoder(torch.cat(views[2:]))))
        student = torch.cat(student).float().view(len(views), n, -1)
        temp = self.teacher_temp   # a 0-d tensor: reading it as a number would wait for the device every step
        with torch.no_grad():
            teacher = self.teacher["head"](self.teacher["encoder"](global_views)).float().view(2, n, -1)
        loss = dino_loss(student, teacher, self.center, self.student_temp, temp)
        with torch.no_grad():
            probs = F.softmax((teacher - self.center) / temp, dim=-1)
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
            if self.training:
                self.center.copy_(dino_center(self.center, teacher, self.center_momentum))
        return MethodOutput(loss, {"loss": loss.detach(), "teacher_entropy": entropy}, h[:n].detach())

    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(step, total_steps, self.momentum_base)
        self.momentum.fill_(m)
        ema_update(self.teacher, nn.ModuleDict({"encoder": self.encoder, "head": self.head}), m)
        if self.warmup_teacher_temp is not None:
            self.teacher_temp.fill_(linear_warmup(step, self.teacher_temp_warmup * total_steps,
                                                  self.warmup_teacher_temp, self.final_teacher_temp))


def linear_warmup(step: int, warmup_steps: float, start: float, end: float) -> float:
    """``start`` at step 0, rising linearly to ``end`` at ``warmup_steps``, then ``end``: a pure function of the step."""
    return end if step >= warmup_steps else start + (end - start) * step / warmup_steps
