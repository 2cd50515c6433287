"""VICReg (Bardes et al. 2022, "VICReg: Variance-Invariance-Covariance Regularization")."""
from __future__ import annotations


from .barlow_twins import expander
from .base import Method, MethodOutput
from .losses import vicreg_loss


class VICReg(Method):
    """Two views -> encoder -> expander; invariance, variance and covariance terms
    (:func:`~ssl_rep.methods.losses.vicreg_loss`, the paper's weights 25 / 25 / 1).

    batch: ``([view0, view1], labels)``, each ``(B, 3, H, W)``. The paper's expander is 8192-8192-8192;
    the defaults here suit small encoders. Variance and covariance use the global batch under
    torch.distributed. logs: ``loss``.
    """

    name = "vicreg"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, hidden_dim: int = 2048, out_dim: int = 2048, sim_weight: float = 25.0,
                 var_weight: float = 25.0, cov_weight: float = 1.0, global_batch: bool = True):
        super().__init__(encoder)
        self.expander = expander(encoder.num_features, hidden_dim, out_dim)
        self.weights = (sim_weight, var_weight, cov_weight)
        self.global_batch = global_batch

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)
        z = self.expander(h).float()
        loss = vicreg_loss(z[:n], z[n:], *self.weights, gather_distributed=self.global_batch)
        return MethodOutput(loss, {"loss": loss.detach()}, h[:n].detach())
