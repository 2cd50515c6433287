"""MoCo v2 (Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"; He et al. 2020)
and MoCo v3 (Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers")."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders.heads import projection_mlp
from .barlow_twins import expander
from .base import Method, MethodOutput
from .losses import _gather_with_grad, moco_loss
from .momentum import cosine_momentum, ema_update, momentum_copy


class MoCo(Method):
    """A query encoder and a momentum key encoder; queries must pick out their own image's key.

    batch: ``([view0, view1], labels)``, each ``(B, 3, H, W)``.

    - ``version=2``: projector ``Linear -> ReLU -> Linear``; negatives are a queue of ``queue_size`` past
      keys (all processes' keys enter it, oldest first out); momentum ``momentum`` (0.999), fixed unless
      ``momentum_final`` is set (then a cosine from one to the other, as solo-learn's MoCo v2+);
      loss ``moco_loss(q0, k1, queue)`` (``symmetric`` adds ``moco_loss(q1, k0, queue)``).
    - ``version=3``: 3-layer projector and a predictor on the query side; no queue, the negatives are the
      batch's other keys (gathered across processes); momentum from ``momentum`` (0.99) to ``momentum_final``
      (1) on a cosine;
      loss ``2 * temperature * (moco_loss(q0, k1) + moco_loss(q1, k0))``, as the paper scales it.

    ``temperature`` defaults to 0.2 (v2) and 1.0 (v3, its ResNet setting). logs: ``loss``, ``momentum``.
    """

    name = "moco"
    option_choices = {"version": (2, 3)}
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, version: int = 2, hidden_dim: int = 2048, out_dim: int = 128,
                 temperature: float | None = None, momentum: float | None = None, queue_size: int = 4096,
                 symmetric: bool = False, momentum_final: float | None = None):
        super().__init__(encoder)
        if version not in (2, 3):
            raise ValueError(f"moco: version must be 2 or 3, got {version!r}")
        self.version, self.symmetric = version, symmetric or version == 3
        self.temperature = temperature if temperature is not None else (0.2 if version == 2 else 1.0)
        self.momentum_base = momentum if momentum is not None else (0.999 if version == 2 else 0.99)
        self.momentum_final = momentum_final if momentum_final is not None else \
            (self.momentum_base if version == 2 else 1.0)
        d = encoder.num_features
        if version == 2:
            self.projector = nn.Sequential(nn.Linear(d, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
            self.predictor = nn.Identity()
            self.register_buffer("queue", F.normalize(torch.randn(queue_size, out_dim), dim=1))
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        else:
            self.projector = expander(d, hidden_dim, out_dim)
            self.predictor = projection_mlp(out_dim, hidden_dim, out_dim)
            self.queue = None
        self.key_encoder = momentum_copy(nn.ModuleDict({"encoder": encoder, "projector": self.projector}))
        self.register_buffer("momentum", torch.tensor(self.momentum_base))

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size, ptr = len(self.queue), int(self.queue_ptr)
        # the newest ``size`` keys, stored in the queue's dtype (under bf16 autocast the keys are bf16)
        keys = _gather_with_grad(keys)[0][-size:].to(self.queue.dtype)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        q = self.predictor(self.projector(h))
        with torch.no_grad():
            k = F.normalize(self.key_encoder["projector"](self.key_encoder["encoder"](x)), dim=1)
        if self.version == 2:
            loss = moco_loss(q[:n], k[n:], self.queue, self.temperature)
            if self.symmetric:
                loss = loss + moco_loss(q[n:], k[:n], self.queue, self.temperature)
            if self.training:
                self._enqueue(k[n:] if not self.symmetric else k)
        else:
            loss = 2 * self.temperature * (moco_loss(q[:n], k[n:], None, self.temperature)
                                           + moco_loss(q[n:], k[:n], None, self.temperature))
        return MethodOutput(loss, {"loss": loss.detach(), "momentum": self.momentum.detach().clone()}, h[:n].detach())

    def after_step(self, step: int, total_steps: int) -> None:
        m = cosine_momentum(step, total_steps, self.momentum_base, self.momentum_final)
        self.momentum.fill_(m)
        ema_update(self.key_encoder, nn.ModuleDict({"encoder": self.encoder, "projector": self.projector}), m)
