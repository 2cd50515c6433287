"""BYOL (Grill et al. 2020, "Bootstrap Your Own Latent")."""
from __future__ import annotations

import torch
from torch import nn

from ..encoders.heads import projection_mlp
from .base import Method, MethodOutput
from .losses import byol_loss
from .momentum import cosine_momentum, ema_update, momentum_copy


class BYOL(Method):
    """Online encoder -> projector -> predictor regresses the momentum target's projection of the other view.

    batch: ``([view0 (B, 3, H, W), view1 (B, 3, H, W)], labels)``. Projector and predictor:
    ``Linear -> BatchNorm1d -> ReLU -> Linear`` (``hidden_dim`` -> ``out_dim``). The target (encoder +
    projector) follows the online network by EMA with ``tau`` rising from ``tau_base`` to 1 on a cosine
    over the run (``after_step``). Loss: ``byol_loss(p0, z1') + byol_loss(p1, z0')``, symmetrised.
    logs: ``loss``, ``tau``.
    """

    name = "byol"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, hidden_dim: int = 4096, out_dim: int = 256, tau_base: float = 0.996):
        super().__init__(encoder)
        self.projector = projection_mlp(encoder.num_features, hidden_dim, out_dim)
        self.predictor = projection_mlp(out_dim, hidden_dim, out_dim)
        self.target = momentum_copy(nn.ModuleDict({"encoder": encoder, "projector": self.projector}))
        self.tau_base = tau_base
        self.register_buffer("tau", torch.tensor(tau_base))

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        p = self.predictor(self.projector(h))
        with torch.no_grad():
            z = self.target["projector"](self.target["encoder"](x))
        loss = byol_loss(p[:n], z[n:]) + byol_loss(p[n:], z[:n])
        return MethodOutput(loss, {"loss": loss.detach(), "tau": self.tau.detach().clone()}, h[:n].detach())

    def after_step(self, step: int, total_steps: int) -> None:
        tau = cosine_momentum(step, total_steps, self.tau_base)
        self.tau.fill_(tau)
        ema_update(self.target, nn.ModuleDict({"encoder": self.encoder, "projector": self.projector}), tau)
