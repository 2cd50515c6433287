"""SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning")."""
from __future__ import annotations

import torch
from torch import nn

from .base import Method, MethodOutput
from .losses import byol_loss


def simsiam_projector(in_dim: int, dim: int) -> nn.Sequential:
    """The paper's 3-layer projector: ``(Linear -> BN -> ReLU) x 2 -> Linear -> BN`` (no affine on the last BN)."""
    return nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False))


class SimSiam(Method):
    """Encoder -> projector -> predictor; each view's prediction regresses the other view's projection
    under a stop-gradient; no negatives, no momentum encoder.

    batch: ``([view0, view1], labels)``, each ``(B, 3, H, W)``. Predictor: ``Linear(dim, pred_dim) -> BN ->
    ReLU -> Linear(pred_dim, dim)``. Loss: ``(byol_loss(p0, z1) + byol_loss(p1, z0)) / 2``, which is
    ``2 + 2 D`` with D the paper's symmetrised negative cosine (eq. 2). logs: ``loss``, ``z_std`` (the
    per-dimension std of the L2-normalised projections; ``1 / sqrt(dim)`` when healthy, 0 on collapse).
    """

    name = "simsiam"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, dim: int = 2048, pred_dim: int = 512):
        super().__init__(encoder)
        self.projector = simsiam_projector(encoder.num_features, dim)
        self.predictor = nn.Sequential(nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim),
                                       nn.ReLU(inplace=True), nn.Linear(pred_dim, dim))

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        z = self.projector(h)
        p = self.predictor(z)
        loss = (byol_loss(p[:n], z[n:]) + byol_loss(p[n:], z[:n])) / 2   # byol_loss stops z's gradient
        with torch.no_grad():
            z_std = nn.functional.normalize(z[:n].float(), dim=1).std(0).mean()
        return MethodOutput(loss, {"loss": loss.detach(), "z_std": z_std}, h[:n].detach())
