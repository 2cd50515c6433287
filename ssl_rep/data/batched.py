"""Batched augmentations: whole ``(N, C, H, W)`` batches on any device, parameters drawn per image from
one ``torch.Generator`` (pure functions; the loaders that use them live in ``ssl_rep.train.loaders``).

Transforms (``BATCHED_TRANSFORMS``): ``cifar_train`` (zero-pad + random crop + flip), ``simclr`` (random resized crop +
flip via one ``grid_sample``, torchvision's colour jitter with per-image factors, random
grayscale), ``eval``/``none`` (normalise only).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .transforms import MIN_SCALE

BATCHED_TRANSFORMS = ("cifar_train", "simclr", "eval", "none")
_GRAY = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights
_ON_DEVICE: dict = {}


def _constant(name, values, device, dtype=torch.float32) -> torch.Tensor:
    """A small constant, copied to ``device`` once: a host-to-device copy per batch would make each
    batch wait for the transfer. ``values`` may be a function, called only the first time."""
    key = (name, str(device), dtype)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = torch.as_tensor(values() if callable(values) else values, dtype=dtype).to(device)
    return _ON_DEVICE[key]


def _uniform(gen: torch.Generator, n: int, ranges: tuple, device) -> torch.Tensor:
    """``(len(ranges), n)`` uniform draws, row ``k`` in ``ranges[k]``, in two kernels.

    On a GPU a training step of a small encoder is bound by kernel launches, not arithmetic: every
    small op here costs as much as a convolution of the model, so the augmentations below are
    written to use as few ops as the maths allows."""
    lo = _constant(("lo", ranges), [[a] for a, _ in ranges], device)
    span = _constant(("span", ranges), [[b - a] for a, b in ranges], device)
    return torch.addcmul(lo, span, torch.rand(len(ranges), n, generator=gen, device=device))


def crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator, size: int | None = None) -> torch.Tensor:
    """Zero-pad by ``pad``, take a random ``size`` crop per image (default: the original size), flip half, as
    ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip`` (any dtype: uint8 images are cropped before they
    are converted, and zero stays black)."""
    n, c, h, w = x.shape
    oh, ow = (size, size) if size else (h, w)
    if oh > h + 2 * pad or ow > w + 2 * pad:
        raise ValueError(f"a {oh}x{ow} crop does not fit {h}x{w} images padded by {pad}")
    dev = x.device
    if (oh, ow) == (h, w):   # one draw for both offsets, as before the size option (old runs reproduce)
        dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1, 1), generator=gen, device=dev)
    else:
        dy = torch.randint(0, h + 2 * pad - oh + 1, (n, 1, 1), generator=gen, device=dev)
        dx = torch.randint(0, w + 2 * pad - ow + 1, (n, 1, 1), generator=gen, device=dev)
    flip = torch.rand(n, 1, 1, generator=gen, device=dev) < 0.5
    cols = torch.where(flip, _constant(("cols-flipped", ow), lambda: range(ow - 1, -1, -1), dev, torch.long),
                       _constant(("cols", ow), lambda: range(ow), dev, torch.long)) + dx
    rows = dy + _constant(("rows", oh), lambda: [[i] for i in range(oh)], dev, torch.long)
    index = (rows * (w + 2 * pad) + cols).view(n, 1, oh * ow).expand(n, c, oh * ow)
    return F.pad(x, (pad, pad, pad, pad)).flatten(2).gather(2, index).view(n, c, oh, ow)


def resized_crop_flip(x: torch.Tensor, size: int, gen: torch.Generator, min_scale: float = MIN_SCALE) -> torch.Tensor:
    """RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)) + horizontal flip, one grid_sample."""
    n, dev = len(x), x.device
    u = _uniform(gen, n, ((min_scale, 1.0), (math.log(3 / 4), math.log(4 / 3)), (-1.0, 1.0), (-1.0, 1.0),
                          (-1.0, 1.0)), dev)
    area, log_ratio, flip = u[0], u[1], u[4]
    # crop width and height (fractions of the image): sqrt(area * ratio), sqrt(area / ratio)
    wh = (area * torch.exp(log_ratio * _constant("+-", [[1.0], [-1.0]], dev))).sqrt_().clamp_(max=1.0)
    centre = u[2:4] * (1 - wh)                       # uniform over the positions that keep the crop inside
    scale = torch.stack((wh[0].copysign(flip), wh[1]), dim=1)   # a negative x scale mirrors the crop
    # affine_grid's sampling points for theta = [[sx, 0, cx], [0, sy, cy]], without building theta
    base = _constant(("grid", size), lambda: [[((2 * j + 1) / size - 1, (2 * i + 1) / size - 1)
                                               for j in range(size)] for i in range(size)], dev)
    grid = torch.addcmul(centre.T[:, None, None, :], base, scale[:, None, None, :])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = _constant("gray-planes", [[[w]] for w in _GRAY], x.device, x.dtype)
    return (x * weights).sum(dim=1, keepdim=True)


def _shift_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` with a factor per image (in turns, ``(n,)``), in about 20 ops instead of
    the ~60 of converting to HSV and back: with the hue ``H`` in sixths of a turn and chroma
    ``C = max - min``, channel ``c`` of the result is ``max - C * clamp(min(k, 4 - k), 0, 1)``,
    ``k = (n_c + H') mod 6``, ``n = (5, 3, 1)`` for (R, G, B) (the closed form of HSV -> RGB)."""
    dev = x.device
    # amin/amax and comparisons, not aminmax/argmax: on CPUs those reduce the 3-long channel axis some 20-200x
    # slower (argmax: 19 ms of the 25 a 256-image batch of 32 px took on 2 cores)
    minc, maxc = x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)
    chroma = maxc - minc
    # H from the channel holding the maximum (red first on ties, like torchvision): for red
    # (G - B) / C, for green (B - R) / C + 2, for blue (R - G) / C + 4
    each = ((x.roll(-1, 1) - x.roll(1, 1)) / chroma.clamp_min(1e-12)
            + _constant("hue-offsets", [[[0.0]], [[2.0]], [[4.0]]], dev))
    red, green = x[:, :1] == maxc, x[:, 1:2] == maxc
    sixths = torch.where(red, each[:, :1], torch.where(green, each[:, 1:2], each[:, 2:]))
    shift = 6 * hue.view(-1, 1, 1, 1) + _constant("hue-n", [[[5.0]], [[3.0]], [[1.0]]], dev)
    k = (sixths + shift).remainder_(6.0)
    return torch.addcmul(maxc, chroma, torch.minimum(k, 4 - k).clamp_(0.0, 1.0), value=-1)


def jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
           hue: torch.Tensor, order: list[int]) -> torch.Tensor:
    """torchvision's ``ColorJitter`` on a batch of [0, 1] images with factors ``(n,)`` per image, the
    four adjustments in ``order`` (0 brightness, 1 contrast, 2 saturation, 3 hue)."""
    n = len(x)
    for op in order:
        if op == 0:
            x = (x * brightness.view(n, 1, 1, 1)).clamp_(0, 1)
        elif op == 1:   # blend with the mean of the grayscale image
            mean = (x.mean(dim=(2, 3)) * _constant("gray", _GRAY, x.device, x.dtype)).sum(dim=1)
            x = torch.lerp(mean.view(n, 1, 1, 1), x, contrast.view(n, 1, 1, 1)).clamp_(0, 1)
        elif op == 2:   # blend with the grayscale image
            x = torch.lerp(_gray(x), x, saturation.view(n, 1, 1, 1)).clamp_(0, 1)
        else:
            x = _shift_hue(x, hue)
    return x


def colour_jitter(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0, p: float = 0.8,
                  p_gray: float = 0.2) -> torch.Tensor:
    """SimCLR's colour distortion on [0, 1] images: torchvision's ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``
    with probability ``p`` and factors drawn per image, then grayscale with probability ``p_gray``.
    The order of the four adjustments is drawn per batch (torchvision draws it per image; Kornia,
    like this, per batch), from the generator's seed on the host so the device is never waited for."""
    n, s = len(x), strength
    u = _uniform(gen, n, ((0.0, 1.0), (1 - 0.8 * s, 1 + 0.8 * s), (1 - 0.8 * s, 1 + 0.8 * s),
                          (1 - 0.8 * s, 1 + 0.8 * s), (-0.2 * s, 0.2 * s), (0.0, 1.0)), x.device)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(gen.initial_seed())).tolist()
    x = torch.where((u[0] < p).view(n, 1, 1, 1), jitter(x, *u[1:5], order), x)
    return torch.where((u[5] < p_gray).view(n, 1, 1, 1), _gray(x), x)


def gaussian_blur(x: torch.Tensor, kernel: int, gen: torch.Generator, p: float = 0.5,
                  sigma: tuple[float, float] = (0.1, 2.0)) -> torch.Tensor:
    """SimCLR's blur on a batch: with probability ``p`` per image, a separable Gaussian of odd size
    ``kernel`` and sigma uniform in ``sigma``, reflect-padded like torchvision's ``gaussian_blur``;
    the whole batch in two grouped convolutions."""
    n, c, h, w = x.shape
    dev, half = x.device, kernel // 2
    s = _uniform(gen, n, (tuple(sigma),), dev)[0]
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


def augment_batch(x: torch.Tensor, transform: str, size: int, gen: torch.Generator, shift: torch.Tensor,
                  unit_scale: torch.Tensor, byte_scale: torch.Tensor, min_scale: float = MIN_SCALE) -> torch.Tensor:
    """uint8 images ``(N, 3, H, W)`` -> normalised float32 ``(N, 3, size, size)`` under ``transform`` (one of
    ``BATCHED_TRANSFORMS``). ``shift``, ``unit_scale``, ``byte_scale``: ``-mean / std``, ``1 / std`` and
    ``1 / (255 std)`` as ``(1, 3, 1, 1)``, so normalising is one multiply-add."""
    if transform == "simclr":   # the colour jitter works on [0, 1] images
        x = colour_jitter(resized_crop_flip(x.float().div_(255.0), size, gen, min_scale), gen)
        return torch.addcmul(shift, x, unit_scale)
    if x.shape[-1] != size:   # a small set at another size: resized whole, as evaluation reads it
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if transform == "cifar_train":
        x = crop_flip(x, max(1, size // 8), gen, size)
    return torch.addcmul(shift, x.float(), byte_scale)
