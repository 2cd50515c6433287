"""Pretraining data: the dataset a recipe names, its image size and its training augmentation
(the order it is read in is :mod:`ssl_rep.train.sampling`'s; the loaders are :mod:`ssl_rep.train.loaders`')."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torchvision.transforms import v2 as T

from ..data import MultiCrop, MultiView, build_dataset, build_transform, stats_for
from ..data.base import ArrayImageDataset, label_map, native_side, take
from ..data.folder import FOLDER_MAX_SIZE, ImageFolderDataset, folder_image_size, folder_split
from ..data.shards import ShardDataset
from ..data.transforms import eval_sizes
from ..methods import method_class
from .config import Config, ConfigError

log = logging.getLogger("ssl_rep.train")


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


def choose_transform(cfg: Config, size: int, wants: str | None = None, n_views: int = 1, crops=None,
                     native: int | None = None):
    """The training transform and its transform_name: ``data.transform``, else the one the method asks for
    (``wants``), else one by image size. ``n_views > 1`` wraps it in :class:`MultiView`; a
    :class:`~ssl_rep.methods.MultiCropSpec` (``crops``) in :class:`MultiCrop`, ``n_views`` global views first.
    ``native``: the side of a small in-memory set's images (:func:`~ssl_rep.data.base.native_side`), read whole
    and resized to ``size`` where that differs (``eval``, ``cifar_train``; the random resized crops always are)."""
    transform_name = cfg.data.transform
    if transform_name == "auto":
        if wants:
            transform_name = wants
        elif size <= 64:
            transform_name = "cifar_train"
        elif cfg.data.dataset.lower() == "imagenet":
            transform_name = "imagenet_train"
        else:
            transform_name = "imagenet_rrc"
    stats = stats_for(cfg.data.dataset)
    kwargs = {"stats": stats, "size": size}
    if transform_name == "cifar_train":
        kwargs["padding"] = max(1, size // 8)
    if transform_name == "eval":
        kwargs["resize"], kwargs["size"] = eval_sizes(size, native)
    if transform_name in ("simclr", "imagenet_rrc"):
        kwargs["min_scale"] = cfg.data.min_scale
    if crops is not None:
        return multi_crop(transform_name, kwargs, n_views, crops), transform_name
    transform = build_transform(transform_name, **kwargs)
    if transform_name == "cifar_train" and native not in (None, size):
        # a small set at another size is resized whole first, then padded and cropped at that size, as evaluation
        # reads it (eval_sizes) and as the resident path does
        transform = T.Compose([T.Resize((size, size), antialias=True), transform])
    if n_views > 1:
        transform = MultiView(transform, n_views)
    return transform, transform_name


def multi_crop(transform_name: str, kwargs: dict, n_global: int, crops) -> MultiCrop:
    if transform_name not in ("simclr", "imagenet_rrc"):
        raise ConfigError(f"multi-crop needs a random-resized-crop transform (data.transform=simclr or imagenet_rrc), "
                          f"not {transform_name!r}")
    size = kwargs["size"]
    local_size = max(8, round(size * crops.local_size))
    (g_lo, g_hi), (l_lo, l_hi) = crops.global_scale, crops.local_scale
    kwargs = {k: v for k, v in kwargs.items() if k not in ("size", "min_scale")}
    return MultiCrop(build_transform(transform_name, size=size, min_scale=g_lo, max_scale=g_hi, **kwargs), n_global,
                     build_transform(transform_name, size=local_size, min_scale=l_lo, max_scale=l_hi, **kwargs),
                     crops.local, (size, local_size))


def build_train_dataset(cfg: Config):
    """The dataset with the chosen training transform, plus its image size and number of classes."""
    wants = method_class(cfg.method.name)
    try:
        raw = build_dataset(cfg.data.dataset, split=cfg.data.split, root=cfg.data.root)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.dataset={cfg.data.dataset!r}: {exc}") from exc
    if cfg.data.subset is not None and cfg.data.subset < len(raw):
        if not isinstance(raw, ArrayImageDataset):
            raise ConfigError("data.subset works with in-memory datasets (digits, fashion-mnist, cifar, stl10)")
        pick = np.sort(np.random.default_rng(cfg.seed).choice(len(raw), cfg.data.subset, replace=False))
        raw = ArrayImageDataset(take(raw.images, pick), raw.labels[pick], None,
                                name=f"{raw.name}[{cfg.data.subset}]", classes=raw.classes)
    if cfg.data.decode_on == "device" and not isinstance(raw, (ImageFolderDataset, ShardDataset)):
        raise ConfigError(f"data.decode_on=device decodes image files on the training device: it needs an image "
                          f"folder, imagenet or shards, not {cfg.data.dataset!r} (in-memory datasets are decoded "
                          f"once already; data.resident keeps them on the device)")
    if hasattr(raw, "set_epoch"):   # streamed shards: shard order, shuffle and augmentation follow the run's seed
        raw.seed = cfg.seed
    size = cfg.data.image_size or image_size_of(raw)
    crops = wants.multi_crop(cfg.method.options)
    if crops is not None and cfg.data.decode_on == "device":
        raise ConfigError("multi-crop (method.local_crops) decodes in DataLoader workers: set data.decode_on=workers")
    raw.transform, transform_name = choose_transform(cfg, size, wants.transform, wants.n_views, crops,
                                                    native_side(raw))
    labels = np.asarray(raw.labels)
    num_classes = len(raw.classes) if getattr(raw, "classes", None) else int(labels.max()) + 1
    return raw, size, num_classes, transform_name


def build_eval_dataset(cfg: Config, size: int, classes: list[str] | None = None):
    """The labelled split for the online probe's end-of-epoch score, or None; its labels count classes as the
    training split's ``classes`` do."""
    split = cfg.data.eval_split
    if not split or split == cfg.data.split:
        return None
    source = cfg.data.dataset
    try:
        if Path(source).is_dir() and folder_split(Path(source), split) == Path(source):
            return None  # a plain folder has no held-out split
        ds = build_dataset(source, split=split, root=cfg.data.root)
    except (FileNotFoundError, ValueError) as exc:
        log.warning("online probe: no %r split (%s); reporting training accuracy only", split, exc)
        return None
    try:
        if isinstance(ds, ImageFolderDataset):
            ds.number_like(classes)
        elif label_map(getattr(ds, "classes", None), classes, source) is not None:
            raise ValueError(f"{source}: the {split} split numbers its classes unlike the training split")
    except ValueError as exc:
        log.warning("online probe: %s; reporting training accuracy only", exc)
        return None
    # read as ssl-probe reads it (the images whole at the training size, or resized and centre-cropped)
    resize, crop = eval_sizes(size, native_side(ds))
    ds.transform = build_transform("eval", stats=stats_for(source), size=crop, resize=resize)
    return ds if (np.asarray(ds.labels) >= 0).any() else None
