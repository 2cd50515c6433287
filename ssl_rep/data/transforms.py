"""Augmentations from the ResNet papers, by name, plus the SimCLR recipe and a multi-view wrapper.

Every transform takes an RGB ``PIL.Image`` and returns a float32 tensor ``(3, H, W)``
(``ten_crop``: ``(10, 3, H, W)``), normalised with the statistics of the named dataset.

========================  ======================================================================
``cifar_train``           zero-pad 4, random ``size`` crop, horizontal flip (He et al. 2016, 4.2)
``imagenet_train``        shorter side uniform in [256, 480], random 224 crop, flip (He et al. 3.4)
``imagenet_rrc``          RandomResizedCrop(224) + flip: the modern alternative
``eval``                  shorter side to 256, true center 224 crop; ``resize=None`` keeps the size
``ten_crop``              4 corners + center of the 256-resized image, and their flips
``simclr``                RandomResizedCrop, flip, colour jitter 0.8, grayscale 0.2 (Chen et al. 2020)
========================  ======================================================================
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from .names import canonical_name

# Per-channel mean/std of the training split, pixel values in [0, 1]. digits and fashion-mnist
# were computed with ssl_rep's own loaders (tests/test_transforms.py recomputes them).
DATASET_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "digits": ((0.3057, 0.3057, 0.3057), (0.3235, 0.3235, 0.3235)),
    "fashion-mnist": ((0.2860, 0.2860, 0.2860), (0.3530, 0.3530, 0.3530)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
TRANSFORMS = ("cifar_train", "imagenet_train", "imagenet_rrc", "eval", "ten_crop", "simclr", "none")
MIN_SCALE = 0.08   # RandomResizedCrop's smallest crop area by default (torchvision, SimCLR); data.min_scale

_to_tensor = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True)])


def to_tensor(img) -> torch.Tensor:
    """RGB PIL image -> float32 tensor ``(3, H, W)`` in [0, 1]."""
    return _to_tensor(img)


def normalization(stats: str | None) -> list[Callable]:
    if stats is None:
        return []
    if stats not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for {stats!r}; known: {', '.join(DATASET_STATS)} "
                         f"(or pass stats=None)")
    mean, std = DATASET_STATS[stats]
    return [T.Normalize(mean, std)]


def mean_std(stats: str | None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The named statistics as ``(1, 3, 1, 1)`` mean and std tensors on ``device`` (0 and 1 for None),
    for normalising whole batches."""
    mean, std = DATASET_STATS[stats] if stats else ((0.0,) * 3, (1.0,) * 3)
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def stats_for(dataset: str) -> str | None:
    """Statistics to use for a dataset name; a folder path falls back to ImageNet's."""
    return canonical_name(dataset) or "imagenet"


def preprocessing(dataset: str, image_size: int | None = None) -> dict:
    """What an encoder trained on ``dataset`` reads: RGB in [0, 1] normalised by that dataset's mean/std (a folder:
    ImageNet's), at ``image_size`` (None: the dataset's own size). Saved with encoders as ``encoder.preprocess``."""
    mean, std = DATASET_STATS[stats_for(str(dataset))]
    return {"dataset": str(dataset), "image_size": image_size, "mean": list(mean), "std": list(std), "channels": 3,
            "scale": "RGB in [0, 1], then (x - mean) / std"}


class TenCropStack:
    """Apply TenCrop and stack: ``(10, 3, size, size)``; order as torchvision (corners, center, flips)."""

    def __init__(self, size: int, post: Callable):
        self.crop, self.post = T.TenCrop(size), post

    def __call__(self, img) -> torch.Tensor:
        return torch.stack([self.post(c) for c in self.crop(img)])


class SeparableGaussianBlur(T.GaussianBlur):
    """torchvision's ``GaussianBlur`` (the same sigma draw, kernel, reflect padding and rounding) as two 1-D passes
    instead of one 2-D convolution. SimCLR's 23-tap kernel at 224 px: 46 multiply-adds per pixel instead of 529, the
    difference between the blur being most of a view's cost in a DataLoader worker and a small part of it."""

    def transform(self, inpt, params):
        if isinstance(inpt, Image.Image):
            return TF.to_pil_image(self._blur(TF.pil_to_tensor(inpt), params["sigma"]))
        if (type(inpt) is torch.Tensor or isinstance(inpt, tv_tensors.Image)) and inpt.ndim >= 3:
            out = self._blur(inpt.as_subclass(torch.Tensor), params["sigma"])
            return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out
        return super().transform(inpt, params)   # videos and anything else: torchvision's own kernel

    def _blur(self, image: torch.Tensor, sigma: list[float]) -> torch.Tensor:
        (kx, ky), shape = self.kernel_size, image.shape
        x = image.reshape(-1, *shape[-3:])
        out = x if x.is_floating_point() else x.float()
        c = shape[-3]

        def taps(k: int, s: float) -> torch.Tensor:
            t = torch.arange(k, dtype=out.dtype, device=out.device) - k // 2
            w = torch.exp(-0.5 * (t / s) ** 2)
            return (w / w.sum()).expand(c, k)

        out = nnf.pad(out, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
        out = nnf.conv2d(out, taps(kx, sigma[0])[:, None, None, :], groups=c)
        out = nnf.conv2d(out, taps(ky, sigma[1])[:, None, :, None], groups=c).reshape(shape)
        return out if image.is_floating_point() else out.round_().to(image.dtype)


def eval_sizes(size: int | None, native: int | None) -> tuple[int | None, int | None]:
    """``(resize, crop)`` for the ``eval`` transform reading images at ``size`` px. A set of ``native``-px images
    in memory (:func:`~ssl_rep.data.base.native_side`) is read whole, as a training crop at full scale sees it:
    as it is, or resized to ``size``; never cropped or padded. Decoded files (``native`` None) are resized to
    ``size * 256 / 224`` and centre-cropped to ``size`` above 64 px (ImageNet's protocol, 224 px by default),
    and resized to ``size`` below."""
    if native is not None:
        return (None, None) if size in (None, native) else (size, size)
    size = size or 224
    return (int(size * 256 / 224) if size > 64 else size), size


def build_transform(name: str, stats: str | None = "imagenet", size: int | None = None,
                    resize: int | None = 256, padding: int = 4, scale_range: tuple[int, int] = (256, 480),
                    min_scale: float = MIN_SCALE, strength: float = 1.0, max_scale: float = 1.0) -> Callable:
    """Build a named transform (table in the module docstring); ``stats`` picks the normalisation.
    ``min_scale`` and ``max_scale`` bound the crop's area (``simclr``, ``imagenet_rrc``)."""
    post = [T.ToImage(), T.ToDtype(torch.float32, scale=True), *normalization(stats)]
    if name == "cifar_train":
        ops = [T.RandomCrop(size or 32, padding=padding, fill=0, padding_mode="constant"),
               T.RandomHorizontalFlip()]
    elif name == "imagenet_train":
        lo, hi = scale_range
        ops = [T.RandomShortestSize(min_size=list(range(lo, hi + 1)), antialias=True),
               T.RandomCrop(size or 224), T.RandomHorizontalFlip()]
    elif name == "imagenet_rrc":
        ops = [T.RandomResizedCrop(size or 224, scale=(min_scale, max_scale), antialias=True),
               T.RandomHorizontalFlip()]
    elif name == "eval":
        ops = ([T.Resize(resize, antialias=True)] if resize else []) + ([T.CenterCrop(size)] if size else [])
    elif name == "ten_crop":
        pre = [T.Resize(resize, antialias=True)] if resize else []
        return T.Compose([*pre, TenCropStack(size or 224, T.Compose(post))])
    elif name == "simclr":
        s = strength
        ops = [T.RandomResizedCrop(size or 32, scale=(min_scale, max_scale), antialias=True),
               T.RandomHorizontalFlip(),
               T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
               T.RandomGrayscale(p=0.2)]
        if (size or 32) >= 96:  # blur helps at ImageNet/STL resolution, hurts on 32 px (SimCLR B.9)
            kernel = (size // 10) | 1
            ops.append(T.RandomApply([SeparableGaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5))
    elif name == "none":
        ops = []
    else:
        raise ValueError(f"unknown transform {name!r}; valid: {', '.join(TRANSFORMS)}")
    transform = T.Compose([*ops, *post])
    if name in ("eval", "none"):
        # Deterministic per-pixel work only: extract_features may apply it to whole uint8 batches
        # on the device instead of image by image (same numbers, see tests/test_eval_probe.py).
        transform.batched_spec = {"stats": stats, "size": size, "resize": resize if name == "eval" else None}
    return transform


class MultiView:
    """``n_views`` independent draws of ``transform`` on one image -> a list of tensors.

    Used by contrastive methods: ``MultiView(build_transform("simclr", ...), 2)``; a DataLoader
    then yields ``([view0 (B,3,H,W), view1 (B,3,H,W)], labels)``.
    """

    def __init__(self, transform: Callable, n_views: int = 2):
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.transform, self.n_views = transform, n_views

    def __call__(self, img) -> list[torch.Tensor]:
        return [self.transform(img) for _ in range(self.n_views)]

    def __repr__(self) -> str:
        return f"MultiView(n_views={self.n_views}, transform={self.transform!r})"


class MultiCrop:
    """Multi-crop (Caron et al. 2020, SwAV; DINO): ``n_global`` draws of ``global_transform`` then ``n_local`` of
    ``local_transform`` (smaller crops at a smaller size) on one image -> a list of tensors, global views first.

    A DataLoader collates each position on its own, so it yields ``([g0, g1, l0, ...], labels)`` with the global
    views ``(B, 3, S, S)`` and the local ones ``(B, 3, s, s)``. ``sizes`` lists each view's side."""

    def __init__(self, global_transform: Callable, n_global: int, local_transform: Callable, n_local: int,
                 sizes: tuple[int, int]):
        if n_global < 1 or n_local < 0:
            raise ValueError(f"multi-crop needs n_global >= 1 and n_local >= 0, got {n_global} and {n_local}")
        self.global_transform, self.local_transform = global_transform, local_transform
        self.n_global, self.n_local = n_global, n_local
        self.n_views = n_global + n_local
        self.sizes = [sizes[0]] * n_global + [sizes[1]] * n_local

    def __call__(self, img) -> list[torch.Tensor]:
        return ([self.global_transform(img) for _ in range(self.n_global)]
                + [self.local_transform(img) for _ in range(self.n_local)])

    def __repr__(self) -> str:
        return f"MultiCrop(global {self.n_global} x {self.sizes[0]} px, local {self.n_local} x {self.sizes[-1]} px)"
