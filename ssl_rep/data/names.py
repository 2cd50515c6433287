"""Dataset names as the library reads them, and what a run records as its dataset."""
from __future__ import annotations

from pathlib import Path

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "stl10", "imagenet")
ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100", "stl-10": "stl10"}


def canonical_name(name) -> str | None:
    """A dataset name in its canonical spelling (case, ``_`` for ``-`` and the aliases ignored); None for anything
    else (a folder path)."""
    key = str(name).lower().replace("_", "-")
    key = ALIASES.get(key, key)
    return key if key in DATASETS else None


def dataset_id(name_or_path) -> str:
    """A dataset as a run records it: a name in its canonical spelling, a folder as its absolute path (names first,
    as :func:`~ssl_rep.data.build_dataset` reads them), so evaluation recognises the folder from any working
    directory."""
    name = str(name_or_path)
    if canonical_name(name):
        return canonical_name(name)
    return str(Path(name).resolve()) if Path(name).is_dir() else name
