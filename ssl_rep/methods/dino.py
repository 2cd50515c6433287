"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Method, MethodOutput
from .losses import dino_center, dino_loss
from .momentum import cosine_momentum, ema_update, momentum_copy


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
    output distribution on the other view (:func:`~ssl_rep.methods.losses.dino_loss`).

    batch: ``([view0, view1], labels)``, each ``(B, 3, H, W)`` (two global views; multi-crop's small
    local views are not drawn here). Teacher: a momentum copy of encoder + head, ``tau`` from
    ``momentum`` (0.996) to 1 on a cosine; the centre follows the teacher's batch mean with momentum
    ``center_momentum`` (every process's batch). logs: ``loss``, ``teacher_entropy`` (nats; collapse to
    one prototype reads 0, to the uniform distribution ``log(out_dim)``).
    """

    name = "dino"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, hidden_dim: int = 2048, bottleneck_dim: int = 256, out_dim: int = 65536,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9,
                 momentum: float = 0.996):
        super().__init__(encoder)
        self.head = DINOHead(encoder.num_features, hidden_dim, bottleneck_dim, out_dim)
        self.teacher = momentum_copy(nn.ModuleDict({"encoder": encoder, "head": self.head}))
        self.student_temp, self.teacher_temp, self.center_momentum = student_temp, teacher_temp, center_momentum
        self.momentum_base = momentum
        self.register_buffer("center", torch.zeros(out_dim))
        self.register_buffer("momentum", torch.tensor(momentum))

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        student = self.head(h).float().view(2, n, -1)
        with torch.no_grad():
            teacher = self.teacher["head"](self.teacher["encoder"](x)).float().view(2, n, -1)
        loss = dino_loss(student, teacher, self.center, self.student_temp, self.teacher_temp)
        with torch.no_grad():
            probs = F.softmax((teacher - self.center) / self.teacher_temp, dim=-1)
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1).mean()
            if self.training:
                self.center.copy_(dino_center(self.center, teacher, self.center_momentum))
        return MethodOutput(loss, {"loss": loss.detach(), "teacher_entropy": entropy}, h[:n].detach())

    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(step, total_steps, self.momentum_base)
        self.momentum.fill_(m)
        ema_update(self.teacher, nn.ModuleDict({"encoder": self.encoder, "head": self.head}), m)
