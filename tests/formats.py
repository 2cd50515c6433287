"""Writers of tiny datasets in the real on-disk formats, shared by the tests."""
import gzip
import pickle
import struct

import numpy as np
from PIL import Image


def make_cifar10_pickles(root, n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    all_data, all_labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n_per_batch}, f, protocol=2)
        if name != "test_batch":
            all_data.append(data)
            all_labels += labels
    return np.concatenate(all_data), np.array(all_labels)


def make_stl10_binary(root, n=4, seed=0, unlabeled=4):
    """``root/stl10_binary`` with train/test (labels 1..10) and unlabeled splits, column-major images."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("test", n), ("unlabeled", unlabeled)):
        hwc = rng.integers(0, 256, size=(count, 96, 96, 3), dtype=np.uint8)
        hwc.transpose(0, 3, 2, 1).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(count) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return folder


def make_imagenet_folders(root, classes=("n01440764", "n01443537"), per_class=3, size=(300, 260)):
    """``root/{train,val}/<wnid>/*.JPEG`` with plain colour JPEGs."""
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", size, (40 * c + 10 * i, 100, 200 - 40 * c)).save(d / f"{wnid}_{i}.JPEG")
    return root


def write_idx(path, array, compress):
    dtype_code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def make_fmnist(folder, n, compress, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels
