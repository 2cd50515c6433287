"""SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual Representations")."""
from __future__ import annotations

import torch
from torch import nn

from ..encoders.heads import projection_mlp
from .base import Method, MethodOutput
from .losses import nt_xent


class SimCLR(Method):
    """Two augmented views -> encoder -> projection MLP -> NT-Xent.

    batch: ``([view0 (B, 3, H, W), view1 (B, 3, H, W)], labels)`` (``MultiView(..., 2)`` makes it).
    Projection head: ``Linear(D, hidden) [-> BatchNorm1d] -> ReLU -> Linear(hidden, out_dim)``.
    Each anchor has 2B - 2 negatives (2 x global batch - 2 under torch.distributed). Evaluate the
    encoder's features (before the head), as the paper does; for clustering, the L2-normalised head
    output can be the better space (``load_encoder(ckpt, projection=True)``, ``--features projection``).
    logs: ``loss``, ``pos_sim`` (mean cosine of positive pairs), ``contrast_acc`` (fraction of
    anchors whose most similar candidate is their positive).
    """

    name = "simclr"
    n_views = 2
    transform = "simclr"

    def __init__(self, encoder, temperature: float = 0.5, hidden_dim: int = 512, out_dim: int = 128,
                 head_batchnorm: bool = True, global_negatives: bool = True):
        super().__init__(encoder)
        self.global_negatives = global_negatives   # under torch.distributed: negatives from every process
        d = encoder.num_features
        self.temperature = temperature
        self.head = projection_mlp(d, hidden_dim, out_dim, batchnorm=head_batchnorm)

    def forward(self, batch):
        x, n = self.views_of(batch)
        h = self.encoder(x)  # one pass: BatchNorm sees both views
        z = self.head(h)
        z0, z1 = z[:n], z[n:]
        loss = nt_xent(z0, z1, self.temperature, gather_distributed=self.global_negatives)
        with torch.no_grad():
            zn = nn.functional.normalize(z.float(), dim=1)
            sim = zn @ zn.T
            sim.fill_diagonal_(-2.0)
            # made on the device: a host tensor copied in would make every step wait for the GPU
            positive = torch.arange(2 * n, device=sim.device).roll(n)   # n..2n-1, then 0..n-1
            acc = (sim.argmax(dim=1) == positive).float().mean()
            pos_sim = (zn[:n] * zn[n:]).sum(dim=1).mean()
        return MethodOutput(loss, {"loss": loss.detach(), "pos_sim": pos_sim, "contrast_acc": acc}, h[:n].detach())
