"""A fully connected encoder on the flattened image: DEC's and N2D's autoencoder encoder (Xie et al. 2016,
McConville et al. 2019: d-500-500-2000, then a 10-value code, which the autoencoder's ``code_dim`` adds)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Encoder

N2D_HIDDEN = (500, 500, 2000)


def fully_connected(widths: Sequence[int]) -> nn.Sequential:
    """Linear layers through ``widths`` (input first), ReLU between them and none after the last; Glorot-uniform
    weights and zero biases, as the Keras ``Dense`` layers of DEC and N2D start."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        layer = nn.Linear(fan_in, fan_out)
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
        layers += [layer, nn.ReLU()] if i < len(widths) - 2 else [layer]
    return nn.Sequential(*layers)


class MLPEncoder(Encoder):
    """``(N, in_chans, image_size, image_size)`` -> flattened -> ``Linear`` + ReLU for each of ``hidden`` ->
    ``(N, hidden[-1])``. ``feature_map`` is that vector as a ``(N, hidden[-1], 1, 1)`` map, so pooling, the probe
    and the autoencoder read it like any encoder's. It reads one image size only (``image_size``, required).
    ``gray=True`` averages the channels first: gray images, which ssl_rep decodes to three equal channels, then cost
    a third of the first layer (DEC and N2D read 784 gray pixels of a 28-px image)."""

    def __init__(self, image_size: int, hidden: Sequence[int] = N2D_HIDDEN, in_chans: int = 3, gray: bool = False):
        super().__init__()
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1:
            raise ValueError(f"mlp encoder image_size must be a positive integer (the side it reads), got "
                             f"{image_size!r}")
        hidden = tuple(hidden)
        if not hidden or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in hidden):
            raise ValueError(f"mlp encoder hidden must be a list of positive layer widths, got {list(hidden)!r}")
        self.image_size, self.hidden, self.in_chans, self.gray = image_size, hidden, in_chans, gray
        self.net = nn.Sequential(*fully_connected(((1 if gray else in_chans) * image_size ** 2, *hidden)), nn.ReLU())
        self.num_features = hidden[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (self.in_chans, self.image_size, self.image_size):
            raise ValueError(f"mlp encoder reads {self.in_chans}x{self.image_size}x{self.image_size} images "
                             f"(encoder.image_size), got {'x'.join(map(str, x.shape[1:]))}")
        if self.gray:
            x = x.mean(dim=1, keepdim=True)
        return self.net(x.flatten(1))[:, :, None, None]
