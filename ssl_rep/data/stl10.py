"""STL-10 (Coates et al. 2011): 96x96 colour images; 5,000 train, 8,000 test, 100,000 unlabeled.

Binary layout under ``root/stl10_binary``: ``{train,test,unlabeled}_X.bin`` (uint8, each image
3x96x96 in column-major order) and ``{train,test}_y.bin`` (labels 1..10, stored here as 0..9).
Images are memory-mapped, so the 2.7 GB unlabeled split costs no RAM until read.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import ArrayImageDataset, check_split

SPLITS = ("train", "test", "unlabeled", "train+unlabeled")
CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SIZE = 96
_RECORD = 3 * SIZE * SIZE


class _STLImages:
    """Column-major STL records presented as ``(N, 96, 96, 3)`` without loading them all."""

    def __init__(self, memmaps: list[np.memmap]):
        self.parts = memmaps
        self.offsets = np.cumsum([0] + [len(m) for m in memmaps])
        self.shape = (int(self.offsets[-1]), SIZE, SIZE, 3)
        self.ndim, self.dtype = 4, np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            part = int(np.searchsorted(self.offsets, index, side="right") - 1)
            record = self.parts[part][index - self.offsets[part]]
            return record.reshape(3, SIZE, SIZE).transpose(2, 1, 0)
        return np.stack([self[int(i)] for i in np.arange(len(self))[index]])

    def __array__(self, dtype=None, copy=None):
        return self[:] if dtype is None else self[:].astype(dtype)


def _memmap(path: Path) -> np.memmap:
    size = path.stat().st_size
    if size == 0 or size % _RECORD:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {_RECORD}-byte STL-10 images")
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(size // _RECORD, _RECORD))


def load_stl10(split: str = "train", transform=None, root=None) -> ArrayImageDataset:
    check_split("stl10", split, SPLITS)
    folder = Path(root if root is not None else "data") / "stl10_binary"
    parts = split.split("+")
    needed = [folder / f"{p}_X.bin" for p in parts] + [folder / f"{p}_y.bin" for p in parts if p != "unlabeled"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"stl10/{split}: missing {', '.join(missing)}. Download the binary version "
            f"(stl10_binary.tar.gz) from https://cs.stanford.edu/~acoates/stl10/ and extract it under "
            f"root={folder.parent} (ssl_rep never downloads at run time).")
    images, labels = [], []
    for p in parts:
        mm = _memmap(folder / f"{p}_X.bin")
        images.append(mm)
        if p == "unlabeled":
            labels.append(np.full(len(mm), -1, dtype=np.int64))
        else:
            y = np.fromfile(folder / f"{p}_y.bin", dtype=np.uint8).astype(np.int64) - 1
            if len(y) != len(mm):
                raise ValueError(f"stl10/{p}: {len(mm)} images in {p}_X.bin but {len(y)} labels in {p}_y.bin")
            labels.append(y)
    return ArrayImageDataset(_STLImages(images), np.concatenate(labels), transform,
                             name=f"stl10/{split}", classes=CLASSES)
