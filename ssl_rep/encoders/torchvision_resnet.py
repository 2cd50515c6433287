"""torchvision's ResNet-18/34/50 as encoders (no classifier, never pretrained weights).

``stem="imagenet"``: the original 7x7 stride-2 conv + 3x3 max-pool (for 224 px);
``stem="cifar"``: a 3x3 stride-1 conv and no max-pool, the usual change for 32-96 px images.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from .base import NORMS, Encoder, make_norm

ARCHS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}


class TorchvisionResNet(Encoder):
    option_choices = {"norm": NORMS, "stem": ("imagenet", "cifar")}

    def __init__(self, arch: str = "resnet18", stem: str = "imagenet", in_chans: int = 3, norm: str = "batch",
                 zero_init_residual: bool = False):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        net = ARCHS[arch](weights=None, norm_layer=lambda c: make_norm(norm, c),
                          zero_init_residual=zero_init_residual)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.num_features = net.fc.in_features
        del net.fc, net.avgpool
        self.body = net

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))
