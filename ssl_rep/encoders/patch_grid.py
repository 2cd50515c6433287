"""An encoder applied patch by patch over an overlapping grid (CPC's way of seeing an image).

``feature_map(x)`` is the grid of patch vectors ``(N, D, gh, gw)`` and ``forward(x)`` its mean
``(N, D)``: the representation CPC v2 evaluates. The wrapped encoder never sees more than one patch.
"""
from __future__ import annotations

import torch

from .base import Encoder


class PatchGridEncoder(Encoder):
    encoder_name = "patch_grid"

    def __init__(self, encoder: Encoder, patch_size: int = 8, stride: int = 4):
        super().__init__()
        if patch_size < 1 or stride < 1:
            raise ValueError(f"patch_size and stride must be >= 1, got {patch_size} and {stride}")
        self.inner = encoder
        self.patch_size, self.stride = patch_size, stride
        self.num_features = encoder.num_features

    @property
    def encoder_kwargs(self) -> dict:  # follows the inner encoder (e.g. after a norm swap)
        return {"encoder": self.inner.encoder_name, "encoder_kwargs": dict(self.inner.encoder_kwargs),
                "patch_size": self.patch_size, "stride": self.stride}

    @encoder_kwargs.setter
    def encoder_kwargs(self, value: dict) -> None:  # set by create_encoder; derived, so ignored
        pass

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, gh, gw, C, P, P)``."""
        p, s = self.patch_size, self.stride
        if x.shape[-2] < p or x.shape[-1] < p:
            raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than patch_size={p}")
        return x.unfold(2, p, s).unfold(3, p, s).permute(0, 2, 3, 1, 4, 5)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, gh, gw, C, P, P)`` -> ``(N, D, gh, gw)``."""
        n, gh, gw = patches.shape[:3]
        z = self.inner(patches.reshape(n * gh * gw, *patches.shape[3:]))
        return z.reshape(n, gh, gw, -1).permute(0, 3, 1, 2)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_patches(self.patchify(x))
