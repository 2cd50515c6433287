"""The one encoder interface: ``forward`` -> pooled features, ``feature_map`` -> last spatial map."""
from __future__ import annotations

import abc

import torch
from torch import nn

NORMS = ("batch", "group", "layer", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm by default; ``group`` (8 groups), ``layer`` (one group over C, H, W) or ``none``
    keep every image independent of the rest of its batch, which CPC needs (no leak between patches)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


class Encoder(nn.Module, abc.ABC):
    """Base class. Subclasses implement ``feature_map`` and set ``num_features``.

    ``forward(x)``: ``(N, in_chans, H, W)`` -> ``(N, num_features)`` by global average pooling of
    ``feature_map(x)`` ``(N, num_features, h, w)``. ``encoder_name`` and ``encoder_kwargs`` are what
    :func:`ssl_rep.create_encoder` was called with, so a checkpoint can rebuild the module.
    """

    num_features: int
    encoder_name: str = ""
    encoder_kwargs: dict = {}

    @abc.abstractmethod
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W)`` -> ``(N, num_features, h, w)``; every encoder defines it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))
