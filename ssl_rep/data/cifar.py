"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the files of the official release.

Two layouts under ``root`` are read, the python-pickle one (torchvision's) first:

- ``cifar-10-batches-py/data_batch_1..5``, ``test_batch``;  ``cifar-100-python/train``, ``test``
- ``cifar-10-batches-bin/data_batch_1..5.bin``, ``test_batch.bin``;  ``cifar-100-binary/train.bin``, ``test.bin``

The pickles are read by an unpickler that only admits the numpy array constructors, so a file
carrying any other object (a code payload) is refused instead of executed.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from .base import ArrayImageDataset, check_split

SPLITS = ("train", "test")
_LAYOUTS = {
    "cifar10": {"pickle": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
                "binary": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)],
                           ["test_batch.bin"])},
    "cifar100": {"pickle": ("cifar-100-python", ["train"], ["test"]),
                 "binary": ("cifar-100-binary", ["train.bin"], ["test.bin"])},
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only "
                                     f"plain data and numpy arrays")


def safe_unpickle(path: str | os.PathLike) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArrayOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR python batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_pickle_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_unpickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise ValueError(f"{path}: missing key {key!r}; found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    return data, np.asarray(batch[label_key], dtype=np.int64)


def _read_binary_batch(path: Path, label_bytes: int, label_offset: int) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3072
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR records")
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:], raw[:, label_offset].astype(np.int64)


def load_cifar(name: str, split: str = "train", transform=None, root=None,
               label: str = "fine") -> ArrayImageDataset:
    """``name`` is ``cifar10`` or ``cifar100``; for CIFAR-100 ``label`` is ``fine`` or ``coarse``."""
    check_split(name, split, SPLITS)
    if label not in ("fine", "coarse"):
        raise ValueError(f"{name}: label must be 'fine' or 'coarse', got {label!r}")
    root = Path(root if root is not None else "data")
    chunks = []
    for layout, (folder, train_files, test_files) in _LAYOUTS[name].items():
        files = [root / folder / f for f in (train_files if split == "train" else test_files)]
        if not all(f.is_file() for f in files):
            continue
        for f in files:
            if layout == "pickle":
                key = "labels" if name == "cifar10" else f"{label}_labels"
                chunks.append(_read_pickle_batch(f, key))
            elif name == "cifar10":
                chunks.append(_read_binary_batch(f, 1, 0))
            else:
                chunks.append(_read_binary_batch(f, 2, 1 if label == "fine" else 0))
        break
    if not chunks:
        expected = "; or ".join(f"{root / folder}/{{{','.join(tr if split == 'train' else te)}}}"
                                for folder, tr, te in _LAYOUTS[name].values())
        raise FileNotFoundError(
            f"{name}/{split}: files not found. Expected {expected}. Download the python or binary "
            f"version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it under root={root} "
            f"(ssl_rep never downloads at run time).")
    data = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # stored as RRR..GGG..BBB per image
    classes = CIFAR10_CLASSES if name == "cifar10" else None
    return ArrayImageDataset(np.ascontiguousarray(images), labels, transform, name=f"{name}/{split}",
                             classes=classes)
