"""The encoder interface (``forward`` -> pooled features, ``feature_map`` -> last spatial map) and a grid-pooled view."""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
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


class GridPooledEncoder(nn.Module):
    """An encoder whose last feature map is average-pooled to a ``grid x grid`` grid, not to one value per channel.

    ``forward(x)``: ``(N, C, h, w)`` map -> ``adaptive_avg_pool2d`` to ``(N, C, grid, grid)`` -> flattened
    ``(N, grid * grid * C)``, channel-major (all cells of channel 0 first). ``grid=1`` is the encoder's own
    globally pooled features. Linear probes read such pooled conv maps (Zhang et al. 2017, Goyal et al. 2019
    resize each map to a few thousand dims): the probe sees where in the image a feature fired, which the global
    average discards. ``encoder_name`` is ``grid_pooled`` and ``encoder_kwargs`` name the inner encoder and the
    grid, so ``create_encoder`` rebuilds it from ``encoder.pt`` (the autoencoder's spatial code is saved this way)
    and cached features of the pooled and the gridded encoder never mix.
    """

    encoder_name = "grid_pooled"

    def __init__(self, encoder: nn.Module, grid: int):
        super().__init__()
        if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
            raise ValueError(f"grid must be a positive integer (cells per side), got {grid!r}")
        if not callable(getattr(encoder, "feature_map", None)):
            raise ValueError(f"{getattr(encoder, 'encoder_name', type(encoder).__name__)} has no feature_map to "
                             f"pool on a grid (a projection head acts on pooled features)")
        self.encoder, self.grid = encoder, grid
        self.num_features = encoder.num_features * grid * grid

    @property
    def encoder_kwargs(self) -> dict:   # follows the inner encoder (e.g. after a norm swap)
        return {"encoder": getattr(self.encoder, "encoder_name", type(self.encoder).__name__),
                "encoder_kwargs": dict(getattr(self.encoder, "encoder_kwargs", {})), "grid": self.grid}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_map(x)

    @staticmethod
    def pool(fmap: torch.Tensor, grid: int) -> torch.Tensor:
        """``(N, C, h, w)`` -> ``(N, grid * grid * C)``: each channel's mean over each of ``grid x grid`` cells."""
        return F.adaptive_avg_pool2d(fmap, grid).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encoder.feature_map(x), self.grid)


class CodeEncoder(nn.Module):
    """An encoder followed by a linear code layer: ``forward(x) = Linear(encoder(x))``, ``(N, code_dim)``.

    The autoencoder's ``code_dim`` bottleneck (N2D's small embedding, McConville et al. 2019): the decoder reads this
    code and nothing else, and ``encoder.pt``, ``load_encoder`` and the probe read exactly it. ``feature_map`` is the
    inner encoder's. ``encoder_name`` is ``code_layer``; ``encoder_kwargs`` name the inner encoder and the code size,
    so ``create_encoder`` rebuilds it."""

    encoder_name = "code_layer"

    def __init__(self, encoder: nn.Module, code_dim: int):
        super().__init__()
        if not isinstance(code_dim, int) or isinstance(code_dim, bool) or code_dim < 1:
            raise ValueError(f"code_dim must be a positive integer, got {code_dim!r}")
        self.encoder, self.code = encoder, nn.Linear(encoder.num_features, code_dim)
        self.num_features = code_dim

    @property
    def encoder_kwargs(self) -> dict:
        return {"encoder": getattr(self.encoder, "encoder_name", type(self.encoder).__name__),
                "encoder_kwargs": dict(getattr(self.encoder, "encoder_kwargs", {})), "code_dim": self.num_features}

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.feature_map(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.code(self.encoder(x))
