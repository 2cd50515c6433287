"""CIFAR ResNet v1 (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

A 3x3 conv with 16 filters, then three stages of n basic blocks with 16, 32 and 64 filters (the
first block of stages 2 and 3 halves the map with stride 2), global average pooling: depth 6n+2.
Convolutions carry no bias (BatchNorm supplies the shift). Shortcuts on downsampling:
option A, identity on every second pixel with zero-padded extra channels (no parameters, the
paper's CIFAR choice); option B, a 1x1 strided projection + norm.
``out_features`` adds a 1x1 conv + norm + ReLU after stage 3 that widens the map to that many channels, as
the bottleneck ResNets' last layer is four times its stage's width: a wide representation for little compute
(CPC v2 reads 4,096-d patch vectors; ``encoder.out_features`` on a CPC recipe).
With a 10-way linear classifier: ResNet-20 0.27M, 32 0.46M, 44 0.66M, 56 0.85M, 110 1.7M parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import NORMS, Encoder, make_norm

DEPTHS = (20, 32, 44, 56, 110)


class PadShortcut(nn.Module):
    """Option A: subsample by 2 and zero-pad ``extra`` channels on each side."""

    def __init__(self, extra_each_side: int):
        super().__init__()
        self.extra = extra_each_side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra, self.extra))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, planes)
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut((planes - in_planes) // 2)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), make_norm(norm, planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Encoder):
    option_choices = {"norm": NORMS, "shortcut": ("A", "B")}

    def __init__(self, depth: int = 20, shortcut: str = "A", in_chans: int = 3, norm: str = "batch",
                 width: int = 16, out_features: int | None = None):
        super().__init__()
        if depth not in DEPTHS and (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (e.g. {DEPTHS}), got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding identity) or 'B' (projection), got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut, norm))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        if out_features is not None and (isinstance(out_features, bool) or not isinstance(out_features, int)
                                         or out_features < 1):
            raise ValueError(f"out_features must be a positive integer or None, got {out_features!r}")
        self.expand = (None if out_features is None else
                       nn.Sequential(nn.Conv2d(in_planes, out_features, 1, bias=False), make_norm(norm, out_features),
                                     nn.ReLU(inplace=True)))
        self.num_features = in_planes if out_features is None else out_features
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x if self.expand is None else self.expand(x)
