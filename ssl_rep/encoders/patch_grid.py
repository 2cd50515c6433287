"""An encoder applied patch by patch over an overlapping grid (CPC's way of seeing an image).

``feature_map(x)`` is the grid of patch vectors ``(N, D, gh, gw)`` and ``forward(x)`` its mean
``(N, D)``: the representation CPC v2 evaluates. The wrapped encoder never sees more than one patch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Encoder


class PatchGridEncoder(Encoder):
    """``patch_size`` px patches at ``stride`` (the training grid: :meth:`patchify`). Features are read
    (:meth:`feature_map`) from a grid at ``read_stride`` (default ``stride``; a denser grid averages more
    patches), each patch seen as its central ``read_crop`` px resized back to ``patch_size`` (default: the
    whole patch) -- the scale at which a CPC encoder trained on jittered crops of ``read_crop`` px saw them."""

    encoder_name = "patch_grid"

    def __init__(self, encoder: Encoder, patch_size: int = 8, stride: int = 4, read_stride: int | None = None,
                 read_crop: int | None = None):
        super().__init__()
        if patch_size < 1 or stride < 1:
            raise ValueError(f"patch_size and stride must be >= 1, got {patch_size} and {stride}")
        if read_stride is not None and read_stride < 1:
            raise ValueError(f"read_stride must be >= 1, got {read_stride}")
        if read_crop is not None and not 1 <= read_crop <= patch_size:
            raise ValueError(f"read_crop must be in [1, patch_size={patch_size}], got {read_crop}")
        self.inner = encoder
        self.patch_size, self.stride = patch_size, stride
        self.read_stride, self.read_crop = read_stride, read_crop
        self.num_features = encoder.num_features

    @property
    def encoder_kwargs(self) -> dict:  # follows the inner encoder (e.g. after a norm swap)
        kwargs = {"encoder": self.inner.encoder_name, "encoder_kwargs": dict(self.inner.encoder_kwargs),
                  "patch_size": self.patch_size, "stride": self.stride}
        kwargs.update({k: v for k, v in (("read_stride", self.read_stride), ("read_crop", self.read_crop)) if v})
        return kwargs

    @encoder_kwargs.setter
    def encoder_kwargs(self, value: dict) -> None:  # set by create_encoder; derived, so ignored
        pass

    def patchify(self, x: torch.Tensor, stride: int | None = None) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, gh, gw, C, P, P)``, at ``stride`` (default: the training grid's)."""
        p, s = self.patch_size, stride or self.stride
        if x.shape[-2] < p or x.shape[-1] < p:
            raise ValueError(f"image {tuple(x.shape[-2:])} is smaller than patch_size={p}")
        return x.unfold(2, p, s).unfold(3, p, s).permute(0, 2, 3, 1, 4, 5)

    def encode_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """``(N, gh, gw, C, P, P)`` -> ``(N, D, gh, gw)``."""
        n, gh, gw = patches.shape[:3]
        z = self.inner(patches.reshape(n * gh * gw, *patches.shape[3:]))
        return z.reshape(n, gh, gw, -1).permute(0, 3, 1, 2)

    def read_view(self, patches: torch.Tensor) -> torch.Tensor:
        """Each patch's central ``read_crop`` px resized back to ``patch_size`` (unchanged without ``read_crop``)."""
        p, c = self.patch_size, self.read_crop
        if not c or c == p:
            return patches
        shape, lo = patches.shape, (p - c) // 2
        flat = patches.reshape(-1, *shape[3:])[..., lo:lo + c, lo:lo + c]
        return F.interpolate(flat, size=(p, p), mode="bilinear", align_corners=False).reshape(shape)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The patch vectors of the read grid (``read_stride``, ``read_crop``): ``(N, D, gh, gw)``."""
        return self.encode_patches(self.read_view(self.patchify(x, self.read_stride)))
