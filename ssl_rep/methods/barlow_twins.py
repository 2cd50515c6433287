"""Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction")."""
from __future__ import annotations

from torch import nn

from .base import Method, MethodOutput
from .losses import barlow_twins_loss


def expander(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 3) -> nn.Sequential:
    """``(Linear -> BN -> ReLU) x (layers - 1) -> Linear``: Barlow Twins' projector and VICReg's expander."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    mods.append(nn.Linear(dim, out_dim, bias=False))
    return nn.Sequential(*mods)


class BarlowTwins(Method):
    """Two views -> encoder -> projector; the cross-correlation of the batch-standardised projections is
    pushed to the identity (:func:`~ssl_rep.methods.losses.barlow_twins_loss`).

    batch: ``([view0, view1], labels)``, each ``(B, 3, H, W)``. The paper's projector is 8192-8192-8192
    for ImageNet; the defaults here suit 64-512-d encoders. Under torch.distributed the correlation is
    over the global batch. ``loss_scale`` multiplies the loss (solo-learn's CIFAR recipe: 0.1). logs: ``loss``.
    """

    name = "barlow_twins"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, hidden_dim: int = 2048, out_dim: int = 2048, lambda_: float = 5e-3,
                 global_batch: bool = True, loss_scale: float = 1.0):
        super().__init__(encoder)
        self.projector = expander(encoder.num_features, hidden_dim, out_dim)
        self.lambda_, self.global_batch, self.loss_scale = lambda_, global_batch, loss_scale

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        z = self.projector(h)
        loss = self.loss_scale * barlow_twins_loss(z[:n].float(), z[n:].float(), self.lambda_, self.global_batch)
        return MethodOutput(loss, {"loss": loss.detach()}, h[:n].detach())
