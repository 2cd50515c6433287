"""Projection heads: the MLP SimCLR trains on top of the encoder, and an encoder that ends in it.

The linear probe reads the encoder's features (before the head), as the SimCLR paper does. For
clustering, the L2-normalised head output -- the sphere on which the contrastive loss compares
images -- can be the better space early in training, and the worse one after longer training:
k-means on Fashion-MNIST, eval/RESULTS.md "k-means: which feature space" and "SimCLR on the CPU
in bf16".
"""
from __future__ import annotations

import torch
from torch import nn


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int, batchnorm: bool = True) -> nn.Sequential:
    """``Linear(in_dim, hidden_dim) [-> BatchNorm1d] -> ReLU -> Linear(hidden_dim, out_dim)``.

    The first Linear has no bias when BatchNorm follows it (the norm's shift replaces it). The
    layer indices (0, 1, 2, 3) are the keys ``head.0.*`` ... ``head.3.*`` in a SimCLR checkpoint.
    """
    return nn.Sequential(nn.Linear(in_dim, hidden_dim, bias=not batchnorm),
                         nn.BatchNorm1d(hidden_dim) if batchnorm else nn.Identity(),
                         nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


def head_from_weights(weights: dict[str, torch.Tensor]) -> nn.Sequential:
    """Rebuild :func:`projection_mlp` from its state dict (keys ``0.weight``, ``3.weight``, ...).

    Raises ``KeyError``/``RuntimeError`` when the weights are not such a head."""
    hidden_dim, in_dim = weights["0.weight"].shape
    out_dim = weights["3.weight"].shape[0]
    head = projection_mlp(in_dim, hidden_dim, out_dim, batchnorm="1.running_mean" in weights)
    head.load_state_dict(weights)   # strict: any other layout is an error
    return head


class ProjectedEncoder(nn.Module):
    """An encoder followed by its training projection head: ``(N, C, H, W) -> (N, num_features)``.

    ``num_features`` is the head's output size. It has no ``feature_map``: the head acts on pooled
    features, so no spatial map corresponds to its output. Made by
    ``load_encoder(checkpoint, projection=True)``; ``encoder_name``/``encoder_kwargs`` name the
    inner encoder and the head's sizes, so cached features of the two spaces never mix.
    """

    def __init__(self, encoder: nn.Module, head: nn.Sequential):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.num_features = head[-1].out_features
        self.encoder_name = f"projection:{getattr(encoder, 'encoder_name', type(encoder).__name__)}"
        self.encoder_kwargs = {**getattr(encoder, "encoder_kwargs", {}),
                               "head": [head[0].in_features, head[0].out_features, self.num_features]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))
