"""Pretraining data: the dataset, its augmentation, and a reproducible, resumable order.

Order: epoch ``e`` visits ``randperm(N)`` drawn from a generator seeded with ``(seed, e)``, so a
resumed run can start in the middle of an epoch by skipping what was done (no data is read for
the skipped part). Augmentation: sample ``i`` of epoch ``e`` is augmented under its own seed
``(seed, e, i)``, so the same images come out whatever the number of workers and wherever a run
was resumed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import MultiView, build_dataset, build_transform, stats_for
from ..data.base import ArrayImageDataset, mix_seed
from ..data.device_decode import EncodedImages, collate_encoded
from ..data.folder import FOLDER_MAX_SIZE, ImageFolderDataset, folder_image_size
from ..data.shards import ShardDataset
from .config import Config, ConfigError

log = logging.getLogger("ssl_rep.train")


class SeededAugment(Dataset):
    """Wraps a dataset; item ``epoch * N + i`` is item ``i`` augmented under seed ``(seed, epoch, i)``."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, code: int):
        epoch, index = divmod(int(code), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochSampler(Sampler):
    """One epoch of ``epoch * N + i`` codes in the seeded order, from batch ``skip_batches`` on.

    Under torch.distributed each of ``world_size`` processes takes its own ``batch_size`` slice of
    every global batch of ``batch_size * world_size``, so together they see what one process with
    the global batch would see, and a resumed run skips the same number of global batches."""

    def __init__(self, n: int, seed: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))

    @property
    def batches_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def rank_order(self, device=None) -> torch.Tensor:
        """``(batches_per_epoch, batch_size)``: this process's indices for each batch of the epoch (on
        ``device``: the whole order is copied there at once)."""
        step, per_epoch = self.batch_size * self.world_size, self.batches_per_epoch
        order = self.order(self.epoch)[:per_epoch * step].to(device)
        return order.view(per_epoch, self.world_size, self.batch_size)[:, self.rank]

    def batches(self, device=None):
        """This process's index batches ``(batch_size,)`` for the current epoch, from ``skip_batches``."""
        per_batch = self.rank_order(device)
        for b in range(self.skip_batches, self.batches_per_epoch):
            yield per_batch[b]

    def __iter__(self):
        for batch in self.batches():
            yield from (self.epoch * self.n + batch).tolist()

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size


def image_size_of(dataset) -> int:
    """The size a dataset trains at when ``data.image_size`` is not set."""
    if isinstance(dataset, ArrayImageDataset):
        return int(dataset.images.shape[1])
    if isinstance(dataset, ImageFolderDataset):
        size, median = folder_image_size(dataset)
        log.info("data.image_size not set: training at %d px (the median short side of %s's images is %d px; "
                 "at most %d)", size, dataset.root, median, FOLDER_MAX_SIZE)
        return size
    return FOLDER_MAX_SIZE


def choose_transform(cfg: Config, size: int):
    name = cfg.data.transform
    method = cfg.method.name
    if name == "auto":
        if method == "simclr":
            name = "simclr"
        elif size <= 64:
            name = "cifar_train"
        elif cfg.data.dataset.lower() == "imagenet":
            name = "imagenet_train"
        else:
            name = "imagenet_rrc"
    stats = stats_for(cfg.data.dataset)
    kwargs = {"stats": stats, "size": size}
    if name == "cifar_train":
        kwargs["padding"] = max(1, size // 8)
    if name == "eval":
        kwargs["resize"] = None if size <= 64 else int(size * 256 / 224)
    if name in ("simclr", "imagenet_rrc"):
        kwargs["min_scale"] = cfg.data.min_scale
    transform = build_transform(name, **kwargs)
    if method == "simclr":
        transform = MultiView(transform, 2)
    return transform, name


def eval_transform(cfg: Config, size: int):
    return build_transform("eval", stats=stats_for(cfg.data.dataset), size=size,
                           resize=None if size <= 64 else int(size * 256 / 224))


def build_train_dataset(cfg: Config):
    """The dataset with the chosen training transform, plus its image size and number of classes."""
    try:
        raw = build_dataset(cfg.data.dataset, split=cfg.data.split, root=cfg.data.root)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.dataset={cfg.data.dataset!r}: {exc}") from exc
    if cfg.data.subset is not None and cfg.data.subset < len(raw):
        if not isinstance(raw, ArrayImageDataset):
            raise ConfigError("data.subset works with in-memory datasets (digits, fashion-mnist, cifar, stl10)")
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(raw), cfg.data.subset, replace=False))
        raw = ArrayImageDataset(raw.images[pick], raw.labels[pick], None,
                                name=f"{raw.name}[{cfg.data.subset}]", classes=raw.classes)
    if cfg.data.decode_on == "device" and not isinstance(raw, (ImageFolderDataset, ShardDataset)):
        raise ConfigError(f"data.decode_on=device decodes image files on the training device: it needs an image "
                          f"folder, imagenet or shards, not {cfg.data.dataset!r} (in-memory datasets are decoded "
                          f"once already; data.gpu_resident keeps them on the device)")
    if hasattr(raw, "set_epoch"):   # streamed shards: shard order, shuffle and augmentation follow the run's seed
        raw.seed = cfg.seed
    size = cfg.data.image_size or image_size_of(raw)
    raw.transform, transform_name = choose_transform(cfg, size)
    labels = np.asarray(raw.labels)
    num_classes = len(raw.classes) if getattr(raw, "classes", None) else int(labels.max()) + 1
    return raw, size, num_classes, transform_name


def build_eval_dataset(cfg: Config, size: int):
    """The labelled split for the online probe's end-of-epoch score, or None."""
    split = cfg.data.eval_split
    if not split or split == cfg.data.split:
        return None
    source = cfg.data.dataset
    if Path(source).is_dir() and not (Path(source) / split).is_dir():
        return None  # a plain folder has no held-out split
    try:
        ds = build_dataset(source, split=split, root=cfg.data.root, transform=eval_transform(cfg, size))
    except (FileNotFoundError, ValueError) as exc:
        log.warning("online probe: no %r split (%s); reporting training accuracy only", split, exc)
        return None
    return ds if (np.asarray(ds.labels) >= 0).any() else None


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
    from .device_decode import DeviceDecodeLoader   # imports gpu_data, which imports this module
    return DeviceDecodeLoader(loader, dataset.transform, transform_name, stats_for(cfg.data.dataset), size, device)
