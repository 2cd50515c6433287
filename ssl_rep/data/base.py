"""In-memory image datasets: one uint8 array, one label array, one transform."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transforms import to_tensor


def mix_seed(*parts: int) -> int:
    """One 32-bit seed from several integers (run seed, epoch, sample index, ...), well mixed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def label_map(classes: Sequence[str] | None, reference: Sequence[str] | None, name: str) -> np.ndarray | None:
    """Where each of a split's ``classes`` (named in its own order: folders number their classes by sorted name)
    sits in the ``reference`` split's classes, the training split's: an array to index that split's labels with,
    or None where the two agree or either has no names. A held-out folder without one of the training classes
    numbers the rest differently; read as they are, its labels would name the wrong classes. A class the
    reference does not have is an error naming it: nothing trained on the reference can predict it."""
    if not classes or not reference or list(classes) == list(reference):
        return None
    missing = [c for c in classes if c not in reference]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{name}: class(es) {shown} not among the training split's {len(reference)} classes; a "
                         f"probe only predicts classes it was trained on (rename or remove those folders)")
    index = {c: i for i, c in enumerate(reference)}
    return np.array([index[c] for c in classes], dtype=np.int64)


def renumber(labels: np.ndarray | None, mapping: np.ndarray | None) -> np.ndarray | None:
    """``labels`` through a :func:`label_map` (None: as they are); -1 (no label) stays -1."""
    if mapping is None or labels is None:
        return labels
    return np.where(labels >= 0, mapping[np.clip(labels, 0, None)], labels)


def spread_indices(n: int, limit: int) -> list[int]:
    """``min(n, limit)`` indices evenly spaced through ``range(n)``: not the first ones, since a folder lists its
    images class by class (ImageNet's val: the first 10,000 are 200 of its 1,000 classes)."""
    return np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(int)).tolist()


class EpochCoded(Dataset):
    """``inner``'s items addressed by the codes :class:`~ssl_rep.train.sampling.EpochSampler` yields: code
    ``epoch * N + i`` is item ``i`` (``N = len(inner)``), and its sample seed is ``mix_seed(seed, epoch, i)``."""

    def __init__(self, inner, seed: int):
        self.inner, self.seed = inner, seed

    def __len__(self) -> int:
        return len(self.inner)

    def locate(self, code: int) -> tuple[int, int]:
        """``(index, sample seed)`` of ``code``."""
        epoch, index = divmod(int(code), len(self.inner))
        return index, mix_seed(self.seed, epoch, index)


class ArrayImageDataset(Dataset):
    """Images held as a uint8 array ``(N, H, W, 3)`` (numpy or a numpy memmap).

    ``dataset[i]`` is ``(transform(PIL RGB image), label)``; without a transform the image is a
    float32 tensor ``(3, H, W)`` in [0, 1]. Labels are int64, -1 where there is none.
    ``images``/``labels`` stay public so a GPU-resident data path can move them in one copy.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, transform: Callable | None = None,
                 name: str = "array", classes: Sequence[str] | None = None):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{name}: expected uint8 images of shape (N, H, W, 3), "
                             f"got {images.dtype} {tuple(images.shape)}")
        if labels is None:
            labels = np.full(len(images), -1, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(images):
            raise ValueError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels
        self.transform = transform
        self.name = name
        self.classes = list(classes) if classes is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(np.asarray(self.images[index]), mode="RGB")
        x = self.transform(img) if self.transform is not None else to_tensor(img)
        return x, int(self.labels[index])

    def tensor(self) -> torch.Tensor:
        """All images as one uint8 tensor ``(N, 3, H, W)`` (for a device-resident data path); a gray set stored
        once is its one channel expanded (stride 0), so moving ``tensor()[:, :1]`` moves every pixel there is."""
        return stored_tensor(self.images).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3]
        return f"{type(self).__name__}({self.name!r}, n={len(self)}, size={h}x{w})"


SMALL_SIDE = 96   # in-memory sets of images at most this size are read whole at evaluation


def native_side(dataset) -> int | None:
    """The side of an in-memory set of small images (digits, Fashion-MNIST, CIFAR, STL-10), which evaluation
    reads whole; None for anything else (decoded files, shards), which it resizes and centre-crops."""
    if isinstance(dataset, ArrayImageDataset) and dataset.images.shape[1] <= SMALL_SIDE:
        return int(dataset.images.shape[1])
    return None


def gray_to_rgb(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` uint8 grayscale -> ``(N, H, W, 3)`` RGB, the one channel stored once: a read-only view whose
    three channels are the same memory (channel stride 0), so a gray set costs a third of RGB's host memory, and
    the device paths upload the one channel and repeat it there (:func:`stored_channels`)."""
    return np.broadcast_to(images[..., None], (*images.shape, 3))


def shares_channels(images: np.ndarray) -> bool:
    """Whether ``(N, H, W, 3)`` images are a gray set stored once (:func:`gray_to_rgb`)."""
    return images.ndim == 4 and images.shape[-1] == 3 and getattr(images, "strides", (1,))[-1] == 0


def stored_channels(images: np.ndarray) -> np.ndarray:
    """The channels actually stored: ``(N, H, W, 1)`` for a gray set kept once, else ``images``; upload this and
    expand to 3 channels on the device."""
    return images[..., :1] if shares_channels(images) else images


def stored_tensor(images: np.ndarray) -> torch.Tensor:
    """:func:`stored_channels` as a uint8 tensor ``(N, H, W, C)`` that owns writable memory (a gray set's channel is
    copied out of its read-only view; a writable contiguous array is used as it is)."""
    stored = stored_channels(images)
    if not (isinstance(stored, np.ndarray) and stored.flags.writeable and stored.flags.c_contiguous):
        stored = np.array(stored)   # also reads array-likes (STL-10's memory-mapped records)
    return torch.from_numpy(stored)


def stored_bytes(images) -> int:
    """Bytes the images take where they are stored (a gray set kept once: a third of its RGB size)."""
    stored = stored_channels(images)
    return int(np.prod(stored.shape)) * np.dtype(stored.dtype).itemsize


def take(images: np.ndarray, index) -> np.ndarray:
    """``images[index]`` for an integer index array, still stored once when the set is gray."""
    return gray_to_rgb(images[..., 0][index]) if shares_channels(images) else images[index]


def check_split(dataset: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid splits: {', '.join(valid)}")
