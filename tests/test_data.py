import logging
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_rep
from ssl_rep.data import ImageFolderDataset, build_dataset, load_rgb
from ssl_rep.data.decode import ImageDecodeError

from formats import make_cifar10_pickles, make_fmnist


# ---------------------------------------------------------------- digits (embedded default)
def test_digits_fixed_split_and_shapes():
    train, test, full = (build_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (1437, 360, 1797)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert 0 <= y <= 9
    # stratified: every class in both splits, in the same proportions as the whole set
    assert np.bincount(test.labels).min() >= 35
    # deterministic and disjoint
    again = build_dataset("digits", split="train")
    assert np.array_equal(again.labels, train.labels) and np.array_equal(again.images, train.images)
    from sklearn.datasets import load_digits
    raw = load_digits()
    assert np.array_equal(np.sort(np.concatenate([train.labels, test.labels])), np.sort(raw.target))


def test_digits_pixels_come_from_sklearn_images():
    from sklearn.datasets import load_digits
    raw = load_digits()
    full = build_dataset("digits", split="all")
    # downsampling the 32x32 image by block-averaging recovers the 8x8 digit (up to interpolation)
    small = full.images[:, :, :, 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)) / 255 * 16
    corr = np.corrcoef(small.ravel(), raw.images.ravel())[0, 1]
    assert corr > 0.95
    assert np.array_equal(full.labels, raw.target)


def test_unknown_split_and_dataset_errors():
    with pytest.raises(ValueError, match="valid splits: train, test, all"):
        build_dataset("digits", split="val")
    with pytest.raises(ValueError, match="digits, fashion-mnist, cifar10"):
        build_dataset("no-such-dataset-or-folder")


# ---------------------------------------------------------------- fashion-mnist (IDX)
@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_reads_idx_files(tmp_path, compress):
    images, labels = make_fmnist(tmp_path, 7, compress)
    ds = build_dataset("fashion-mnist", split="test", root=tmp_path)
    assert len(ds) == 7 and ds.classes[0] == "T-shirt/top"
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and y == labels[3]
    assert torch.allclose(x[1], torch.from_numpy(images[3]).float() / 255)


def test_fashion_mnist_torchvision_raw_layout(tmp_path):
    _, labels = make_fmnist(tmp_path / "FashionMNIST" / "raw", 5, True)
    assert np.array_equal(build_dataset("fashion_mnist", root=tmp_path).labels, labels)


def test_fashion_mnist_missing_and_corrupt_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr("ssl_rep.data.fashion_mnist.DEFAULT_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist", root=tmp_path)
    make_fmnist(tmp_path, 4, False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        build_dataset("fashion-mnist", root=tmp_path)


@pytest.mark.skipif(not __import__("os").path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="Fashion-MNIST is not installed: `make data` (Debian's dataset-fashion-mnist) runs it")
def test_real_fashion_mnist_from_debian_package(tmp_path, caplog):
    train, test = build_dataset("fashion-mnist"), build_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert np.array_equal(np.bincount(train.labels), np.full(10, 6000))
    with caplog.at_level("WARNING", logger="ssl_rep.data"):   # the system copy, named where it is, or the asked one
        build_dataset("fashion-mnist", split="test", root="/usr/share/datasets/fashion-mnist/")
        assert not caplog.text
        assert len(build_dataset("fashion-mnist", split="test", root=tmp_path / "typo")) == 10000
    assert f"not under root={tmp_path / 'typo'}; reading the system copy in /usr/share" in caplog.text


# ---------------------------------------------------------------- CIFAR (pickle and binary)
def test_cifar10_pickle_layout(tmp_path):
    data, labels = make_cifar10_pickles(tmp_path)
    train = build_dataset("cifar10", split="train", root=tmp_path)
    assert len(train) == 20 and len(build_dataset("cifar10", split="test", root=tmp_path)) == 4
    assert np.array_equal(train.labels, labels)
    x, _ = train[5]
    # the official layout stores 1024 red, then 1024 green, then 1024 blue values, row-major
    expected = torch.from_numpy(data[5].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expected)
    assert train.classes[0] == "airplane"


def test_cifar100_pickle_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": [42, 99], b"coarse_labels": [3, 19]}, f)
    assert list(build_dataset("cifar100", root=tmp_path).labels) == [42, 99]
    assert list(build_dataset("cifar100", root=tmp_path, label="coarse").labels) == [3, 19]


def test_cifar_binary_layouts(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    records = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, size=(3, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(folder / name)
        records.append(rec)
    train = build_dataset("cifar10", root=tmp_path)
    assert len(train) == 15 and train.labels[0] == records[0][0, 0]
    assert torch.allclose(train[0][0], torch.from_numpy(records[0][0, 1:].reshape(3, 32, 32)).float() / 255)
    folder100 = tmp_path / "cifar-100-binary"
    folder100.mkdir()
    rec = rng.integers(0, 256, size=(2, 3074), dtype=np.uint8)
    rec[:, 0], rec[:, 1] = [1, 2], [77, 88]
    rec.tofile(folder100 / "test.bin")
    assert list(build_dataset("cifar100", split="test", root=tmp_path).labels) == [77, 88]


def test_cifar_missing_files_say_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data_batch_1.*cs.toronto.edu"):
        build_dataset("cifar10", root=tmp_path)


def test_cifar_pickle_with_code_payload_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        build_dataset("cifar10", root=tmp_path)
    assert not marker.exists()


# ---------------------------------------------------------------- STL-10 (binary, column-major)
def test_stl10_binary_layout_and_unlabeled_split(tmp_path):
    folder = tmp_path / "stl10_binary"
    folder.mkdir()
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(3, 96, 96, 3), dtype=np.uint8)
    # the release stores each image as (3, 96, 96) in column-major (Fortran/MATLAB) order
    hwc.transpose(0, 3, 2, 1).tofile(folder / "train_X.bin")
    np.array([1, 10, 5], dtype=np.uint8).tofile(folder / "train_y.bin")
    hwc[:2].transpose(0, 3, 2, 1).tofile(folder / "unlabeled_X.bin")
    train = build_dataset("stl10", split="train", root=tmp_path)
    assert list(train.labels) == [0, 9, 4]
    x, _ = train[1]
    assert x.shape == (3, 96, 96)
    assert torch.allclose(x, torch.from_numpy(hwc[1]).permute(2, 0, 1).float() / 255)
    both = build_dataset("stl10", split="train+unlabeled", root=tmp_path)
    assert len(both) == 5 and list(both.labels[3:]) == [-1, -1]
    assert torch.allclose(both[4][0], torch.from_numpy(hwc[1]).permute(2, 0, 1).float() / 255)
    assert tuple(both.tensor().shape) == (5, 3, 96, 96)
    with pytest.raises(FileNotFoundError, match="test_X.bin"):
        build_dataset("stl10", split="test", root=tmp_path)


# ---------------------------------------------------------------- folders and decoding
def write_mixed_folder(folder):
    """The real formats a pile of images holds, good and bad."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=95)  # red in CMYK
    Image.new("L", (12, 9), 128).save(folder / "gray.png")
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    pal.save(folder / "palette.png", transparency=1)
    sixteen = Image.fromarray(np.full((6, 7), 65535, dtype=np.uint16))
    sixteen.save(folder / "deep16.png")
    rgba = np.zeros((5, 5, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    rgba[0, 0] = (255, 0, 0, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.PNG")
    good = folder / "good.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:200])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    (folder / "readme.txt").write_text("ignored: not an image extension")


def test_folder_decodes_every_format_to_rgb_and_counts_bad_files(tmp_path, caplog):
    write_mixed_folder(tmp_path / "pile")
    with caplog.at_level(logging.WARNING, logger="ssl_rep.data"):
        ds = build_dataset(tmp_path / "pile")
    assert isinstance(ds, ImageFolderDataset) and ds.classes is None
    names = sorted(p.split("/")[-1] for p, _ in ds.samples)
    assert names == ["alpha.PNG", "cmyk.jpg", "deep16.png", "good.jpg", "gray.png", "palette.png"]
    bad = sorted(p.split("/")[-1] for p, _ in ds.bad_files)
    assert bad == ["empty.jpg", "notes.png", "truncated.jpg"]
    assert "skipped 3 of 9" in caplog.text and "empty.jpg" in caplog.text
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.ndim == 3 and x.shape[0] == 3 and y == -1
    by_name = {p.split("/")[-1]: i for i, (p, _) in enumerate(ds.samples)}
    cmyk = ds[by_name["cmyk.jpg"]][0]
    assert cmyk[0].mean() > 0.9 and cmyk[1].mean() < 0.1 and cmyk[2].mean() < 0.1
    assert torch.allclose(ds[by_name["deep16.png"]][0], torch.ones(3, 6, 7))
    alpha = ds[by_name["alpha.PNG"]][0]
    assert torch.allclose(alpha[:, 0, 0], torch.tensor([1.0, 0, 0])) and torch.allclose(alpha[:, 4, 4], torch.ones(3))
    palette = ds[by_name["palette.png"]][0]
    assert torch.allclose(palette[:, 0, 0], torch.tensor([0, 0, 1.0]))  # index 0 is opaque blue
    assert torch.allclose(ds[by_name["gray.png"]][0], torch.full((3, 9, 12), 128 / 255))


def test_class_subfolders_give_labels_and_split_subfolder_is_used(tmp_path):
    for split in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (10, 10), colour).save(d / f"{i}.JPEG")
    ds = build_dataset(tmp_path, split="val")
    assert ds.classes == ["cat", "dog"] and ds.labels == [0, 0, 1, 1]
    imagenet = build_dataset("imagenet", split="train", root=tmp_path)
    assert len(imagenet) == 4 and imagenet.classes == ["cat", "dog"]
    x, y = imagenet[3]
    assert y == 1 and x[2].mean() > 0.9


def test_a_folder_split_train_val_is_tested_on_val_and_refuses_other_splits(tmp_path):
    """A folder laid out train/val (ImageNet's layout) is tested on val/ by ssl-probe's, ssl-cluster's and the
    online probe's default split "test"; read whole instead, its split names became the labels (probe 0.5 on two
    trivially separable classes). A split it does not have is an error naming the ones it has."""
    from ssl_rep.train import load_config
    from ssl_rep.train.data import build_eval_dataset

    for split, n in (("train", 3), ("val", 2)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (10, 10), colour).save(tmp_path / split / cls / f"{i}.png")
    test = build_dataset(tmp_path, split="test")
    assert test.classes == ["cat", "dog"] and test.labels == [0, 0, 1, 1]
    online = build_eval_dataset(load_config("simclr_digits", [f"data.dataset={tmp_path}"]), 10)
    assert online.classes == ["cat", "dog"] and len(online) == 4
    with pytest.raises(ValueError, match="no 'unlabeled' split; the folder is split into train, val"):
        build_dataset(tmp_path, split="unlabeled")
    flat = build_dataset(tmp_path / "train", split="test")   # no split folders: the folder itself, as before
    assert flat.classes == ["cat", "dog"] and len(flat) == 6


def test_a_class_named_like_a_split_is_a_class_not_a_split(tmp_path, caplog):
    """One folder per class where one class is called ``test``: every class is read, ``test`` among them,
    for every split asked; before, ``split="test"`` read only that class's folder (as unlabeled) and
    ``split="train"`` refused the folder as one split into test alone."""
    for cls, colour in (("cat", (255, 0, 0)), ("test", (0, 255, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (10, 10), colour).save(tmp_path / cls / "0.png")
    (tmp_path / ".cache").mkdir()   # hidden folders are neither classes nor splits
    with caplog.at_level("WARNING", logger="ssl_rep.data"):
        for split in ("test", "train"):
            ds = build_dataset(tmp_path, split=split)
            assert ds.classes == ["cat", "dog", "test"] and ds.labels == [0, 1, 2]
    assert "read as one folder per class, test among them" in caplog.text
    split = tmp_path / "split"
    for s in ("train", "test"):
        (split / s / "a").mkdir(parents=True)
        Image.new("RGB", (10, 10), (9, 9, 9)).save(split / s / "a" / "0.png")
    (split / ".git").mkdir()
    assert build_dataset(split, split="test").root == split / "test"


def test_hidden_files_and_folders_and_macos_leftovers_are_not_read(tmp_path):
    """A hidden folder of thumbnails became a class of its own, and macOS's ._ files and __MACOSX/ from a zip were
    counted as undecodable images."""
    for cls in ("cat", "dog", ".thumbnails", "__MACOSX"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (10, 10), (200, 0, 0)).save(tmp_path / cls / "0.png")
    (tmp_path / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    ds = build_dataset(tmp_path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 2 and not ds.bad_files



def test_an_image_beside_class_folders_is_read_unlabeled_with_a_warning(tmp_path, caplog):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (10, 10), (200, 0, 0)).save(tmp_path / cls / "0.png")
    Image.new("RGB", (10, 10), (0, 0, 0)).save(tmp_path / "cover.png")
    with caplog.at_level("WARNING", logger="ssl_rep.data"):
        ds = build_dataset(tmp_path)
    assert ds.classes is None and len(ds) == 3
    assert "1 image(s) at the top level" in caplog.text and "beside 2 in subfolders" in caplog.text


def test_imagenet_missing_folder_error_says_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train/<wnid>/\*\.JPEG"):
        build_dataset("imagenet", root=tmp_path)


def test_empty_folder_and_all_bad_folder_fail_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        build_dataset(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("nope")
    with pytest.raises(ValueError, match="none of the 2 image files could be decoded"):
        build_dataset(bad)


def test_file_that_breaks_after_the_check_is_skipped_not_fatal(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(folder / f"{i}.png")
    ds = ImageFolderDataset(folder, verify="header")
    (folder / "1.png").write_bytes(b"corrupted later")
    x, _ = ds[1]  # serves the next good image instead of dying mid-epoch
    assert torch.allclose(x[0, 0, 0], torch.tensor(200 / 255))
    assert len(ds.bad_files) == 1 and ds.bad_files[0][0].endswith("1.png")


def test_symlink_loop_and_exif_rotation(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "loop").symlink_to(folder)
    img = Image.new("RGB", (20, 10), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(folder / "rotated.jpg", exif=exif.tobytes())
    ds = build_dataset(folder)
    assert len(ds) == 1
    assert ds[0][0].shape == (3, 20, 10)


def test_decompression_bomb_is_refused_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr("ssl_rep.data.decode.MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageDecodeError, match="big.png: declares 300x300 pixels"):
        load_rgb(path)


def test_public_api_exposes_build_dataset():
    assert ssl_rep.build_dataset is build_dataset


def test_unreadable_file_and_non_utf8_name_are_handled(tmp_path, monkeypatch, caplog):
    """A file we may not read (simulated: tests often run as root, which chmod does not stop) is
    skipped and named; a file name that is not valid UTF-8 loads like any other."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "ok.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "locked.png")
    odd = os.fsencode(folder) + b"/caf\xe9-latin1.png"   # Latin-1 bytes, not UTF-8
    with open(odd, "wb") as f:
        Image.new("RGB", (8, 8), (0, 255, 0)).save(f, format="PNG")
    real_open = Image.open

    def guarded_open(fp, *args, **kwargs):
        if str(fp).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", guarded_open)
    with caplog.at_level(logging.WARNING, logger="ssl_rep.data"):
        ds = build_dataset(folder, verify="full")
    assert len(ds) == 2 and [p.endswith("locked.png") for p, *_ in ds.bad_files] == [True]
    assert "Permission denied" in caplog.text and "locked.png" in caplog.text
    colours = sorted(tuple(ds[i][0][:, 0, 0].tolist()) for i in range(2))
    assert colours == [(0.0, 1.0, 0.0), (1.0, 0.0, 0.0)]
    with open(os.fsencode(folder) + b"/bad-\xff.jpg", "wb") as f:
        f.write(b"not a jpeg")
    for verify in ("header", "full"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ssl_rep.data"):
            ds = build_dataset(folder, verify=verify)
        assert len(ds) == 2 and len(ds.bad_files) == 2
        assert "bad-\\xff.jpg" in caplog.text   # printable, and the message is valid UTF-8
        caplog.text.encode("utf-8")
