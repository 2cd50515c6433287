"""A GPU-resident data path: uint8 images live on the device, augmentation runs there in batches.

For datasets that fit in device memory (digits, Fashion-MNIST, CIFAR, STL-10 at 96 px) this
removes the CPU from the data path, as airbench does for CIFAR. Order and randomness match the
DataLoader path's contract: epoch ``e`` visits ``randperm`` seeded with ``(seed, e)``; batch ``b``
of epoch ``e`` is augmented by a generator seeded with ``(seed, e, b)``, so resume is exact.

Augmentations: ``cifar_train`` (zero-pad + random crop + flip), ``simclr`` (random resized crop +
flip via one ``grid_sample``, torchvision's colour jitter with per-image factors, random
grayscale), ``eval``/``none`` (normalise only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
# torchvision's own HSV conversions (private: the public adjust_hue takes one factor for the whole batch)
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from ..data.transforms import mean_std
from .data import EpochSampler, mix_seed

GPU_TRANSFORMS = ("cifar_train", "simclr", "eval", "none")
_GRAY = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights
_ON_DEVICE: dict = {}


def _constant(name: str, values, device, dtype=torch.float32) -> torch.Tensor:
    """A small constant, copied to ``device`` once: a host-to-device copy per batch would make each
    batch wait for the transfer."""
    key = (name, str(device), dtype)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = torch.as_tensor(values, dtype=dtype).to(device)
    return _ON_DEVICE[key]


def _rand(gen: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad``, take a random crop of the original size per image, flip half."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    flip = torch.rand(n, generator=gen, device=x.device) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def resized_crop_flip(x: torch.Tensor, size: int, gen: torch.Generator, min_scale: float = 0.08) -> torch.Tensor:
    """RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)) + horizontal flip, one grid_sample."""
    n, dev = len(x), x.device
    area = _rand(gen, n, min_scale, 1.0, dev)
    log_ratio = _rand(gen, n, math.log(3 / 4), math.log(4 / 3), dev)
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=gen, device=dev) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=gen, device=dev) - 1) * (1 - h)
    sign = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, (n, x.shape[1], size, size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = _constant("gray", _GRAY, x.device, x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` with a factor per image: the hue channel in HSV moved by ``hue``."""
    h, s, v = _rgb_to_hsv(x).unbind(dim=1)
    return _hsv_to_rgb(torch.stack(((h + hue.view(-1, 1, 1)).remainder(1.0), s, v), dim=1))


def jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
           hue: torch.Tensor, order: list[int]) -> torch.Tensor:
    """torchvision's ``ColorJitter`` on a batch of [0, 1] images with factors ``(n,)`` per image, the
    four adjustments in ``order`` (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    n = len(x)
    for op in order:
        if op == 0:
            x = (x * brightness.view(n, 1, 1, 1)).clamp(0, 1)
        elif op == 1:
            mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast.view(n, 1, 1, 1) + mean).clamp(0, 1)
        elif op == 2:
            gray = _gray(x)
            x = ((x - gray) * saturation.view(n, 1, 1, 1) + gray).clamp(0, 1)
        else:
            x = _shift_hue(x, hue)
    return x


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0, p: float = 0.8,
                  p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion on [0, 1] images: torchvision's ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``
    with probability ``p`` and factors drawn per image, then grayscale with probability ``p_gray``.
    The order of the four adjustments is drawn per batch (torchvision draws it per image; Kornia,
    like this, per batch), from the generator's seed on the host so the device is never waited for."""
    n, dev = len(x), x.device
    s = strength
    apply = (torch.rand(n, generator=gen, device=dev) < p).view(n, 1, 1, 1)
    factors = [_rand(gen, n, 1 - 0.8 * s, 1 + 0.8 * s, dev) for _ in range(3)]
    hue = _rand(gen, n, -0.2 * s, 0.2 * s, dev)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(gen.initial_seed())).tolist()
    x = torch.where(apply, jitter(x, *factors, hue, order), x)
    make_gray = (torch.rand(n, generator=gen, device=dev) < p_gray).view(n, 1, 1, 1)
    return torch.where(make_gray, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, kernel: int, gen: torch.Generator, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """SimCLR's blur on a batch: with probability ``p`` per image, a separable Gaussian of odd size
    ``kernel`` and sigma uniform in ``sigma``, reflect-padded like torchvision's ``gaussian_blur``;
    the whole batch in two grouped convolutions."""
    n, c, h, w = x.shape
    dev, half = x.device, kernel // 2
    s = _rand(gen, n, sigma[0], sigma[1], dev)
    t = torch.arange(kernel, device=dev, dtype=x.dtype) - half
    weights = torch.exp(-0.5 * (t[None, :] / s[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    identity = (t == 0).to(x.dtype).expand(n, kernel)
    weights = torch.where((torch.rand(n, generator=gen, device=dev) < p)[:, None], weights, identity)
    per_channel = weights.repeat_interleave(c, dim=0)                      # (n * c, kernel)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, per_channel[:, None, None, :], groups=n * c)
    y = F.conv2d(y, per_channel[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


class GPUResidentLoader:
    """Iterates ``(images, labels)`` batches like the DataLoader path, from tensors on ``device``.

    ``images``: uint8 ``(N, 3, H, W)``; ``labels``: int64 ``(N,)``. Yields float32 normalised
    ``(B, 3, size, size)`` (or a list of ``n_views`` of them) and labels, ``drop_last`` style.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, transform: str,
                 stats: str | None, size: int, n_views: int = 1, device="cuda", rank: int = 0, world_size: int = 1):
        if transform not in GPU_TRANSFORMS:
            raise ValueError(f"GPU-resident data supports transforms {', '.join(GPU_TRANSFORMS)}, not {transform!r}")
        self.device = torch.device(device)
        self.images = images.to(self.device, non_blocking=True)
        self.labels = labels.to(self.device)
        self.batch_size, self.seed, self.transform = batch_size, seed, transform
        self.size, self.n_views = size, n_views
        self.mean, self.std = mean_std(stats, self.device)
        self.sampler = EpochSampler(len(images), seed, batch_size, rank, world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.sampler.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = x.float() / 255.0
        if self.transform == "cifar_train":
            x = crop_flip(x, max(1, self.size // 8), gen)
        elif self.transform == "simclr":
            x = colour_jitter(resized_crop_flip(x, self.size, gen), gen)
        elif x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean) / self.std

    def __iter__(self):
        epoch, sampler = self.sampler.epoch, self.sampler
        for b, idx in enumerate(sampler.batches(), start=sampler.skip_batches):
            parts = (self.seed, epoch, b) if sampler.world_size == 1 else (self.seed, epoch, b, sampler.rank)
            gen = torch.Generator(device=self.device).manual_seed(mix_seed(*parts))
            idx = idx.to(self.device)
            raw = self.images[idx]
            views = [self.augment(raw, gen) for _ in range(self.n_views)]
            yield (views if self.n_views > 1 else views[0]), self.labels[idx]
