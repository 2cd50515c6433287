"""The autoencoder's decoders: from a feature map, from a code through a small map (both convolutional), and DEC's
and N2D's fully connected mirror of their encoder."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..encoders import fully_connected
from ..encoders.mlp import N2D_HIDDEN


class Decoder(nn.Module):
    """``(B, C, h, w)`` feature map -> ``(B, out_chans, H, W)``: a 1x1 conv, then ``n_up`` blocks of
    (nearest x2 upsample, 3x3 conv, BatchNorm, ReLU), a 3x3 conv to pixels, and a final resize when
    ``H`` is not ``h * 2 ** n_up`` exactly."""

    def __init__(self, in_chans: int, out_size: tuple[int, int], map_size: tuple[int, int],
                 out_chans: int = 3, width: int = 128):
        super().__init__()
        n_up = max(0, round(math.log2(max(out_size[0] / map_size[0], 1))))
        layers: list[nn.Module] = [nn.Conv2d(in_chans, width, 1), nn.ReLU(inplace=True)]
        ch = width
        for _ in range(n_up):
            nxt = max(32, ch // 2)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, nxt, 3, padding=1, bias=False),
                       nn.BatchNorm2d(nxt), nn.ReLU(inplace=True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, out_chans, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.out_size = tuple(out_size)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        out = self.net(fmap)
        if out.shape[-2:] != self.out_size:
            out = F.interpolate(out, size=self.out_size, mode="bilinear", align_corners=False)
        return out


class CodeDecoder(nn.Module):
    """``(B, D, g, g)`` code -> ``(B, out_chans, H, W)``: a linear layer to a ``width``-channel map of
    the encoder's last spatial size, then :class:`Decoder`. Everything it sees is the code."""

    def __init__(self, code_dim: int, out_size: tuple[int, int], map_size: tuple[int, int], out_chans: int = 3,
                 width: int = 128):
        super().__init__()
        self.fc = nn.Linear(code_dim, width * map_size[0] * map_size[1])
        self.map_shape = (width, *map_size)
        self.body = Decoder(width, out_size, map_size, out_chans, width)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.fc(code.flatten(1)))
        return self.body(hidden.view(len(code), *self.map_shape))


class MLPDecoder(nn.Module):
    """``(B, ...)`` code, flattened -> fully connected layers through ``hidden`` (ReLU between) -> a linear layer to
    ``out_chans * H * W`` values -> ``(B, out_chans, H, W)``: DEC's and N2D's decoder, the mirror of their encoder."""

    def __init__(self, code_dim: int, out_size: tuple[int, int], out_chans: int = 3,
                 hidden: tuple[int, ...] = N2D_HIDDEN[::-1]):
        super().__init__()
        self.out_shape = (out_chans, *out_size)
        self.net = fully_connected((code_dim, *hidden, out_chans * out_size[0] * out_size[1]))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code.flatten(1)).view(len(code), *self.out_shape)
