"""Data layer: every source becomes a Dataset of ``(image, label)``, label -1 where there is none."""
from __future__ import annotations

import os
from pathlib import Path

from .base import ArrayImageDataset
from .cifar import load_cifar
from .decode import ImageDecodeError, load_rgb
from .digits import load_digits_dataset
from .fashion_mnist import load_fashion_mnist
from .names import DATASETS, dataset_id
from .folder import ImageFolderDataset, folder_split, load_imagenet
from .stl10 import load_stl10
from .transforms import DATASET_STATS, MultiCrop, MultiView, build_transform, stats_for, to_tensor


def build_dataset(name_or_path: str | os.PathLike, split: str = "train", transform=None, root=None, **kwargs):
    """A torch Dataset of ``(image, label)`` from a dataset name or a folder path.

    Names: ``digits`` (embedded, no download), ``fashion-mnist``, ``cifar10``, ``cifar100``,
    ``stl10``, ``imagenet``. ``root`` is where the files are (each loader's docstring gives the
    expected layout). Anything else is treated as a folder of images; if ``path/split`` is a
    folder it is used (``train``/``val`` layouts; :func:`~ssl_rep.data.folder.folder_split`), else the path
    itself. A folder holding
    ``shards.json`` is read as WebDataset tar shards (:mod:`ssl_rep.data.shards`), streamed. Without ``transform``
    images come back as float32 ``(3, H, W)`` tensors in [0, 1].
    """
    name = str(name_or_path)
    key = dataset_id(name)
    if key == "digits":
        return load_digits_dataset(split, transform, **kwargs)
    if key == "fashion-mnist":
        return load_fashion_mnist(split, transform, root, **kwargs)
    if key in ("cifar10", "cifar100"):
        return load_cifar(key, split, transform, root, **kwargs)
    if key == "stl10":
        return load_stl10(split, transform, root, **kwargs)
    if key == "imagenet":
        return load_imagenet(split, transform, root, **kwargs)
    path = Path(name)
    if path.is_dir():
        chosen = folder_split(path, split)
        if (chosen / "shards.json").is_file():   # WebDataset tar shards (ssl_rep.data.shards)
            from .shards import ShardDataset
            return ShardDataset(chosen, transform, **kwargs)
        return ImageFolderDataset(chosen, transform, **kwargs)
    raise ValueError(f"unknown dataset {name!r}: not one of {', '.join(DATASETS)} and not an existing folder")


__all__ = ["ArrayImageDataset", "DATASETS", "DATASET_STATS", "ImageDecodeError", "ImageFolderDataset",
           "MultiCrop", "MultiView", "build_dataset", "build_transform", "dataset_id", "load_rgb", "stats_for",
           "to_tensor"]
