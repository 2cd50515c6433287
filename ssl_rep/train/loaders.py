"""Loaders: every way a training batch reaches the loop, behind :func:`build_loader`.

- **resident** (:class:`ResidentLoader`): an in-memory dataset's uint8 images kept on the training
  device (GPU or CPU), augmented there in whole batches (``ssl_rep.data.batched``).
- **device decode** (:class:`DeviceDecodeLoader`): ``data.decode_on=device``: DataLoader workers read
  image files, each batch is decoded in one call (nvjpeg on a GPU) and augmented on the device.
- **shards** (:class:`ShardEpochLoader`): streamed WebDataset shards with per-process batch counts.
- **DataLoader**: per-image torchvision augmentation in worker processes.

All follow :mod:`ssl_rep.train.sampling`'s order and seeds, so a resumed run reads what the
uninterrupted one would have. Device decode: each image's crop and flip come from the transform's
own torchvision ops run under the worker path's seed (pixels differ only by tensor vs PIL
resampling); SimCLR's colour distortion and blur then run batched.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T

from ..data import MultiCrop, MultiView
from ..data.base import ArrayImageDataset, mix_seed, stored_bytes
from ..data.batched import BATCHED_TRANSFORMS, augment_batch, colour_jitter, gaussian_blur
from ..data.device_decode import EncodedImages, collate_encoded, decode_batch
from ..data.shards import ShardDataset
from ..data.transforms import MIN_SCALE, mean_std, stats_for
from .config import Config, ConfigError
from .sampling import EpochSampler, SeededAugment

RESIDENT_MAX_BYTES = 4 << 30   # the auto choice keeps datasets up to this size resident


def use_resident(cfg: Config, dataset, transform_name: str) -> bool:
    """Whether to keep the uint8 images on the training device and augment whole batches there
    (``data.resident``): on a GPU it takes the CPU off the data path; on a CPU, batched tensor
    augmentation in the training process costs less than per-image PIL augmentation in worker
    processes that share the model's cores (eval/RESULTS.md, "Data path")."""
    possible = (isinstance(dataset, ArrayImageDataset) and transform_name in BATCHED_TRANSFORMS
                and not isinstance(dataset.transform, MultiCrop))
    if cfg.data.resident == "on" and not possible:
        raise ConfigError("data.resident=on needs an in-memory dataset (digits, fashion-mnist, cifar, stl10), "
                          f"a transform among {', '.join(BATCHED_TRANSFORMS)} and views of one size (no multi-crop); "
                          f"got {cfg.data.dataset!r} with {transform_name!r}")
    if cfg.data.resident == "off" or not possible:
        return False
    return cfg.data.resident == "on" or stored_bytes(dataset.images) <= RESIDENT_MAX_BYTES


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


class ResidentLoader:
    """Iterates ``(images, labels)`` batches like the DataLoader path, from tensors on ``device``.

    ``images``: uint8 ``(N, 3, H, W)``; ``labels``: int64 ``(N,)``. Yields float32 normalised
    ``(B, 3, size, size)`` (or a list of ``n_views`` of them) and labels, ``drop_last`` style.

    On CUDA the augmentation runs for ``batches_per_call`` batches at once (up to 16, within 128 MB
    of output), so its ~100 small kernel launches are paid once per call rather than per step: a
    step of a small encoder on a GPU is bound by launches, not by arithmetic. Call ``c`` of epoch
    ``e`` draws from a generator seeded with ``(seed, e, c)``; a resumed run recomputes the call
    its first batch falls in, so resume stays exact.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, transform: str,
                 stats: str | None, size: int, n_views: int = 1, device="cuda", rank: int = 0, world_size: int = 1,
                 batches_per_call: int | None = None, min_scale: float = MIN_SCALE):
        if transform not in BATCHED_TRANSFORMS:
            raise ValueError(f"resident data supports transforms {', '.join(BATCHED_TRANSFORMS)}, not {transform!r}")
        self.device = torch.device(device)
        # NCHW on the device (``ArrayImageDataset.tensor()`` is a channels-last view of the HWC array): batches come
        # out in the layout the loop trains in, with no per-step conversion
        if images.stride(1) == 0:   # a gray set stored once: upload its one channel, repeat it on the device
            self.images = images[:, :1].to(self.device, non_blocking=True).contiguous().expand(-1, 3, -1, -1)
        else:
            self.images = images.to(self.device, non_blocking=True).contiguous()
        self.labels = labels.to(self.device)
        self.batch_size, self.seed, self.transform = batch_size, seed, transform
        self.size, self.n_views, self.min_scale = size, n_views, min_scale
        mean, std = mean_std(stats, self.device)
        self.unit_scale, self.shift = 1 / std, -mean / std   # for [0, 1] images
        self.byte_scale = self.unit_scale / 255   # for uint8 ones
        self.sampler = EpochSampler(len(images), seed, batch_size, rank, world_size)
        if batches_per_call is None:
            batch_bytes = batch_size * n_views * 3 * size * size * 4
            batches_per_call = max(1, min(16, (128 << 20) // batch_bytes)) if self.device.type == "cuda" else 1
        self.batches_per_call = batches_per_call

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.sampler.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return augment_batch(x, self.transform, self.size, gen, self.shift, self.unit_scale, self.byte_scale,
                             self.min_scale)

    def __iter__(self):
        sampler, k, b_size = self.sampler, self.batches_per_call, self.batch_size
        epoch, first, total = sampler.epoch, sampler.skip_batches, sampler.batches_per_epoch
        per_batch = sampler.rank_order(self.device)   # one copy per epoch: a copy per batch would wait
        for call in range(first // k, -(-total // k)):
            b0, b1 = call * k, min(total, (call + 1) * k)
            parts = (self.seed, epoch, call) if sampler.world_size == 1 else (self.seed, epoch, call, sampler.rank)
            gen = torch.Generator(device=self.device).manual_seed(mix_seed(*parts))
            idx = per_batch[b0:b1].reshape(-1)
            raw = self.images[idx]
            # all views of all the call's batches in one augmentation: row j of view v is v * m + j
            out = self.augment(raw.repeat(self.n_views, 1, 1, 1) if self.n_views > 1 else raw, gen)
            labels, m = self.labels[idx], len(idx)
            for b in range(max(b0, first), b1):
                lo = (b - b0) * b_size
                views = [out[v * m + lo:v * m + lo + b_size] for v in range(self.n_views)]
                yield (views if self.n_views > 1 else views[0]), labels[lo:lo + b_size]


class ShardEpochLoader:
    """Epochs over a :class:`~ssl_rep.data.shards.ShardDataset` with the sampler interface the loop uses.

    Every process stops after the same number of batches (processes can hold different numbers of
    samples, and each DataLoader worker drops its own partial batch), and a resumed epoch skips the
    batches already done: shard order, shuffle buffer and augmentation are seeded, so the skipped
    batches are exactly those of the interrupted run (with the same ``data.num_workers``)."""

    def __init__(self, dataset, cfg: Config, device: torch.device):
        self.dataset, self.skip = dataset, 0
        b, workers = cfg.data.batch_size, cfg.data.num_workers
        fewest = min(dataset.rank_count(r) for r in range(dataset.world_size))
        self.batches_per_epoch = max(0, fewest - max(1, workers) * (b - 1)) // b
        if self.batches_per_epoch == 0:
            raise ConfigError(f"data.batch_size={b}: the shards give some process only {fewest} samples, not a "
                              f"full batch per DataLoader worker ({max(1, workers)}); use a smaller batch or fewer workers")
        # Not persistent: workers see the new epoch. A private generator: making an iterator must not
        # draw from the global RNG (a resumed run makes one at a different point than the straight run).
        self.loader = DataLoader(dataset, batch_size=b, drop_last=True, num_workers=workers,
                                 collate_fn=collate_encoded if dataset.encoded else None,
                                 pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.dataset.set_epoch(epoch)
        self.skip = skip_batches

    def __iter__(self):
        for b, batch in enumerate(self.loader):
            if b >= self.batches_per_epoch:
                return
            if b >= self.skip:
                yield batch


def build_loader(dataset, cfg: Config, device: torch.device, seed: int, rank: int = 0, world_size: int = 1,
                 transform_name: str = "none", size: int = 224):
    """``(loader, sampler)``: ``loader`` yields ``(images, labels)`` batches (images a list of views for a
    :class:`MultiView` transform); ``sampler`` has ``set_epoch(epoch, skip_batches)`` and
    ``batches_per_epoch`` (the same object for the resident and shard loaders)."""
    if use_resident(cfg, dataset, transform_name):
        loader = ResidentLoader(dataset.tensor(), torch.as_tensor(dataset.labels), cfg.data.batch_size, seed,
                                transform_name, stats_for(cfg.data.dataset), size,
                                n_views=getattr(dataset.transform, "n_views", 1), device=device, rank=rank,
                                world_size=world_size, min_scale=cfg.data.min_scale)
        return loader, loader
    on_device = cfg.data.decode_on == "device"
    if isinstance(dataset, ShardDataset):
        dataset.encoded = on_device
        sampler = ShardEpochLoader(dataset, cfg, device)
        return (on_device_loader(sampler, dataset, cfg, transform_name, size, device) if on_device else sampler), sampler
    if len(dataset) < cfg.data.batch_size * world_size:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} x {world_size} processes is larger than the dataset "
                          f"({len(dataset)} images in {cfg.data.dataset}/{cfg.data.split})")
    sampler = EpochSampler(len(dataset), seed, cfg.data.batch_size, rank, world_size)
    workers = cfg.data.num_workers
    # A private generator: creating an iterator (each epoch, and on resume) must not consume the
    # global RNG, or a resumed run's model-side randomness would drift from the uninterrupted run's.
    loader = DataLoader(EncodedImages(dataset, seed) if on_device else SeededAugment(dataset, seed),
                        batch_size=cfg.data.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=collate_encoded if on_device else None,
                        generator=torch.Generator().manual_seed(seed), num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                        prefetch_factor=4 if workers > 0 else None)
    return (on_device_loader(loader, dataset, cfg, transform_name, size, device) if on_device else loader), sampler


def on_device_loader(loader, dataset, cfg: Config, transform_name: str, size: int, device: torch.device):
    return DeviceDecodeLoader(loader, dataset.transform, transform_name, stats_for(cfg.data.dataset), size, device)
