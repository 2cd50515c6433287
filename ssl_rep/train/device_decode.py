"""The ``data.decode_on=device`` training path: JPEG folders decoded and augmented on the training device.

DataLoader workers read files (:class:`~ssl_rep.data.device_decode.EncodedImages`); here each batch
is decoded in one call (nvjpeg on a GPU) and augmented on the device. Order and per-sample seeds are
the worker path's, and each image's crop and flip come from the transform's own torchvision ops run
under that seed, so they draw the same boxes and flips as the worker path (pixels differ only by
tensor vs PIL resampling). SimCLR's colour distortion and blur then run batched, as on the
GPU-resident path (torchvision's jitter with per-image factors, the order drawn per batch).
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2 as T

from ..data import MultiView
from ..data.base import mix_seed
from ..data.device_decode import decode_batch
from ..data.transforms import mean_std
from .gpu_data import colour_jitter, gaussian_blur

GEOMETRIC = (T.RandomResizedCrop, T.RandomShortestSize, T.RandomCrop, T.RandomHorizontalFlip, T.Resize, T.CenterCrop)


def geometric_part(transform) -> T.Compose:
    """The leading crop / resize / flip ops of a :func:`~ssl_rep.data.build_transform` transform (of
    one view, for :class:`MultiView`)."""
    base = transform.transform if isinstance(transform, MultiView) else transform
    ops = []
    for op in base.transforms:
        if not isinstance(op, GEOMETRIC):
            break
        ops.append(op)
    return T.Compose(ops)


class DeviceDecodeLoader:
    """Iterates ``(images, labels)`` like the DataLoader path; ``loader`` yields
    :func:`~ssl_rep.data.device_decode.collate_encoded` batches."""

    def __init__(self, loader, transform, transform_name: str, stats: str | None, size: int, device):
        self.loader, self.device = loader, torch.device(device)
        self.geometric = geometric_part(transform)
        self.n_views = transform.n_views if isinstance(transform, MultiView) else 1
        self.colour = transform_name == "simclr"
        self.blur_kernel = (size // 10) | 1 if self.colour and size >= 96 else 0   # as build_transform
        self.mean, self.std = mean_std(stats, self.device)

    def crops(self, images: list[torch.Tensor], seeds: list[int]) -> list[list[torch.Tensor]]:
        """Per view, each image's geometric ops under its own seed (the global CPU generator, where
        torchvision draws its parameters, is restored afterwards)."""
        saved = torch.get_rng_state()
        views: list[list[torch.Tensor]] = [[] for _ in range(self.n_views)]
        try:
            for image, seed in zip(images, seeds):
                torch.manual_seed(seed)
                for view in views:
                    view.append(self.geometric(image))
        finally:
            torch.set_rng_state(saved)
        return views

    def augment(self, images: list[torch.Tensor], seeds: list[int]):
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(*seeds[:8]))
        out = []
        for view in self.crops(images, seeds):
            x = torch.stack(view).float().div_(255)
            if self.colour:
                x = colour_jitter(x, gen)
                if self.blur_kernel:
                    x = gaussian_blur(x, self.blur_kernel, gen)
            out.append((x - self.mean) / self.std)
        return out if self.n_views > 1 else out[0]

    def __iter__(self):
        for kinds, payloads, labels, seeds, names in self.loader:
            images = decode_batch(kinds, payloads, names, self.device)
            good = [i for i, image in enumerate(images) if image is not None]
            if not good:
                raise RuntimeError(f"no image of a batch could be decoded; first: {names[0]}")
            if len(good) < len(images):   # keep the batch size (decode_batch logged the bad ones): repeat
                # decodable images (and their labels) of the batch
                source = [i if image is not None else good[i % len(good)] for i, image in enumerate(images)]
                images, labels = [images[j] for j in source], labels[source]
            yield self.augment(images, seeds), labels
