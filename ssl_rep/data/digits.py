"""scikit-learn's handwritten digits: the embedded default, so everything runs without a download.

1,797 grayscale 8x8 images (values 0..16) in 10 classes, shipped inside scikit-learn. We scale
them to 0..255, upsample to 32x32 with bilinear interpolation (the CIFAR encoders' input size) and
repeat the channel three times. The split is fixed: a stratified 80/20 split with
``random_state=0`` gives 1,437 train and 360 test images; ``split="all"`` returns all 1,797.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from .base import ArrayImageDataset, check_split, gray_to_rgb, take

SPLITS = ("train", "test", "all")
IMAGE_SIZE = 32


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    small = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
                    for im in small])
    images = gray_to_rgb(big)
    labels = bunch.target.astype(np.int64)
    index = np.arange(len(labels))
    train_idx, test_idx = train_test_split(index, test_size=0.2, stratify=labels, random_state=0)
    return images, labels, np.sort(train_idx), np.sort(test_idx)


def load_digits_dataset(split: str = "train", transform=None) -> ArrayImageDataset:
    check_split("digits", split, SPLITS)
    images, labels, train_idx, test_idx = _digits_arrays()
    index = {"train": train_idx, "test": test_idx, "all": np.arange(len(labels))}[split]
    return ArrayImageDataset(take(images, index), labels[index], transform, name=f"digits/{split}",
                             classes=[str(d) for d in range(10)])
