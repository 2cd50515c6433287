"""Fashion-MNIST (Xiao et al. 2017): 60,000 + 10,000 real 28x28 grayscale images, 10 classes.

Read from the original IDX files, gzipped or not. Where we look, in order: ``root``,
``root/FashionMNIST/raw`` (torchvision's layout), ``root/fashion-mnist``, and
``/usr/share/datasets/fashion-mnist`` (Debian: ``apt-get install dataset-fashion-mnist``).
"""
from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np

from .base import ArrayImageDataset, check_split, gray_to_rgb

log = logging.getLogger("ssl_rep.data")

SPLITS = ("train", "test")
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a numpy array; errors name the file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes of data) "
                         f"but the file holds {len(data) - header}; truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def _candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if root is not None:
        root = Path(root)
        dirs += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    dirs.append(Path(DEFAULT_ROOT))
    return dirs


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / f"{name}.gz", d / name):
            if candidate.is_file():
                return candidate
    return None


def load_fashion_mnist(split: str = "train", transform=None, root=None) -> ArrayImageDataset:
    check_split("fashion-mnist", split, SPLITS)
    dirs = _candidate_dirs(root)
    image_name, label_name = FILES[split]
    image_path, label_path = _find(image_name, dirs), _find(label_name, dirs)
    if image_path is None or label_path is None:
        missing = [n for n, p in ((image_name, image_path), (label_name, label_path)) if p is None]
        raise FileNotFoundError(
            f"fashion-mnist/{split}: cannot find {' and '.join(m + '[.gz]' for m in missing)} in any of: "
            f"{', '.join(str(d) for d in dirs)}. Install them with "
            f"'apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or put the four IDX files "
            f"from the Fashion-MNIST release under root=...")
    if root is not None and image_path.parent not in dirs[:-1]:   # asked for a copy that is not there
        log.warning("fashion-mnist/%s: not under root=%s; reading the system copy in %s", split, root, DEFAULT_ROOT)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"fashion-mnist/{split}: {image_path} has shape {images.shape} and "
                         f"{label_path} has shape {labels.shape}; expected (N, 28, 28) and (N,)")
    return ArrayImageDataset(gray_to_rgb(images.astype(np.uint8)), labels.astype(np.int64), transform,
                             name=f"fashion-mnist/{split}", classes=CLASSES)
