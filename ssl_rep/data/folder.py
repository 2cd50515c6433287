"""Folders of image files: a user's own unlabeled pile, class folders, and ImageNet's layout.

Images are found recursively (jpg, jpeg, png, bmp, webp, tif, tiff; any case). When every image
sits inside a first-level subfolder, those subfolders are the classes (sorted names -> 0..C-1);
a flat folder, or one with images at its top level, is unlabeled (label -1).

Files that cannot be decoded are skipped and counted, never fatal mid-epoch:
- ``verify="full"`` decodes every file up front (progress bar) and drops the bad ones;
- ``verify="header"`` only opens headers (catches empty and non-image files quickly);
- ``verify="none"`` trusts the listing;
``"auto"`` (default) is ``full`` up to 20,000 files and ``header`` above. Any file that still
fails later is replaced by the next good one and reported once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .base import label_map, spread_indices
from .decode import IMAGE_EXTENSIONS, ImageDecodeError, is_image_file, load_rgb, shown_path
from .transforms import to_tensor

log = logging.getLogger("ssl_rep.data")
FULL_VERIFY_LIMIT = 20_000
SHOW_BAD = 5
FOLDER_MAX_SIZE = 224    # a folder of photos trains at ImageNet's crop size
SIZE_STEP = 4            # CIFAR ResNets halve the map twice: a multiple of 4 keeps every stage whole
SIZE_SAMPLE = 256        # image headers read to find a folder's typical size


_WARNED: set[str] = set()


def warn_once(message: str, *args) -> None:
    """A warning about a folder's layout, once per process: every split and evaluation builds the dataset again."""
    text = message % args
    if text not in _WARNED:
        _WARNED.add(text)
        log.warning("%s", text)


def skipped_name(name: str) -> bool:
    """Hidden files and folders (``.thumbnails/``, macOS's ``._photo.jpg``) and zip archives' ``__MACOSX/``: not the
    user's images, and a hidden folder of thumbnails would otherwise become a class."""
    return name.startswith(".") or name == "__MACOSX"


def scan_images(root: Path) -> list[Path]:
    """Every image file below ``root``, sorted, but for :func:`skipped_name` ones; symlinked folders are followed
    once (no loops)."""
    found, seen_dirs = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=None):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = sorted(d for d in dirnames if not skipped_name(d))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f) and not skipped_name(f))
    return found


def _header_ok(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return f"{shown_path(path)}: empty file (0 bytes)"
        with Image.open(path) as img:
            img.size  # noqa: B018 - opening parses the header; that is the check
        return None
    except Exception as exc:  # any failure to parse means "bad file", reported with its reason
        return f"{shown_path(path)}: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")


def _decode_ok(path: Path) -> str | None:
    try:
        load_rgb(path)
        return None
    except ImageDecodeError as exc:
        return str(exc)


class ImageFolderDataset(Dataset):
    """``(transform(RGB PIL image), label)`` for every good image file below ``root``.

    Attributes: ``samples`` (path, label) pairs kept, ``classes``, ``bad_files`` (path, reason)
    pairs skipped.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, verify: str = "auto",
                 name: str | None = None):
        self.root = Path(root)
        self.transform = transform
        self.name = name or str(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such folder")
        if verify not in ("auto", "full", "header", "none"):
            raise ValueError(f"verify must be auto, full, header or none, got {verify!r}")
        paths = scan_images(self.root)
        if not paths:
            raise ValueError(f"{self.root}: no image files found (looked recursively for "
                             f"{', '.join(e[1:] for e in IMAGE_EXTENSIONS)})")
        top_level = [p for p in paths if p.parent == self.root]
        if top_level:
            self.classes = None
            labelled = [(p, -1) for p in paths]
            if len(top_level) < len(paths):   # a stray file beside class folders takes every label away
                warn_once("%s: %d image(s) at the top level (%s) beside %d in subfolders: read as one unlabeled "
                            "folder; move them into a class folder (or out) for the subfolders to be labels",
                            self.root, len(top_level), shown_path(top_level[0]), len(paths) - len(top_level))
        else:
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in paths})
            index = {c: i for i, c in enumerate(self.classes)}
            labelled = [(p, index[p.relative_to(self.root).parts[0]]) for p in paths]
        if verify == "auto":
            verify = "full" if len(paths) <= FULL_VERIFY_LIMIT else "header"
        self.bad_files: list[tuple[str, str]] = []
        if verify != "none":
            check = _decode_ok if verify == "full" else _header_ok
            kept = []
            for path, label in tqdm(labelled, desc=f"checking images ({verify})", unit="img",
                                    disable=len(labelled) < 2000, leave=False):
                reason = check(path)
                if reason is None:
                    kept.append((path, label))
                else:
                    self.bad_files.append((str(path), reason))
            labelled = kept
        self._report_bad(total=len(paths))
        if not labelled:
            raise ValueError(f"{self.root}: none of the {len(paths)} image files could be decoded; "
                             f"first: {self.bad_files[0][1]}")
        self.samples = [(str(p), y) for p, y in labelled]
        self._reported_runtime = 0

    def _report_bad(self, total: int) -> None:
        if self.bad_files:
            shown = "; ".join(reason for _, reason in self.bad_files[:SHOW_BAD])
            more = f" (and {len(self.bad_files) - SHOW_BAD} more)" if len(self.bad_files) > SHOW_BAD else ""
            log.warning("%s: skipped %d of %d image files that cannot be decoded: %s%s",
                        self.root, len(self.bad_files), total, shown, more)

    def number_like(self, reference: list[str]) -> None:
        """Number this folder's classes as ``reference`` does (another split's classes, which may hold more):
        labels and ``classes`` follow it (:func:`~ssl_rep.data.base.label_map`)."""
        mapping = label_map(self.classes, reference, str(self.root))
        if mapping is not None:
            self.samples = [(p, int(mapping[y])) for p, y in self.samples]
            self.classes = list(reference)

    @property
    def labels(self) -> list[int]:
        return [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int, load: Callable = load_rgb):
        """``(load(path), label)`` for file ``index``; a file that fails to load (an
        :class:`ImageDecodeError`) is counted, reported a few times, and the next file is served."""
        for attempt in range(len(self.samples)):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                return load(path), label
            except ImageDecodeError as exc:
                # Passed the up-front check but fails now (truncated after a header check, or
                # changed on disk): count it, say so a few times, and serve the next file.
                self.bad_files.append((path, str(exc)))
                if self._reported_runtime < SHOW_BAD:
                    log.warning("skipping undecodable image (%d so far): %s", len(self.bad_files), exc)
                    self._reported_runtime += 1
        raise RuntimeError(f"{self.root}: every image failed to decode; first: {self.bad_files[0][1]}")

    def image(self, index: int):
        """File ``index`` as an RGB PIL image (no transform, no skipping)."""
        return load_rgb(self.samples[index][0])

    def __getitem__(self, index: int):
        img, label = self.read(index)
        return (self.transform(img) if self.transform is not None else to_tensor(img)), label

    def __repr__(self) -> str:
        n_cls = len(self.classes) if self.classes else 0
        return f"ImageFolderDataset({self.name!r}, n={len(self)}, classes={n_cls}, bad={len(self.bad_files)})"


FOLDER_SPLITS = ("train", "val", "test")


def split_folders(path: Path) -> list[str]:
    """The split folders (of ``FOLDER_SPLITS``) that ``path`` is divided into; none when it has none, or when
    they sit beside other folders: then it is one folder per class, some of them named like splits, and those
    names are labels (a warning says so)."""
    with os.scandir(path) as entries:
        subdirs = {e.name for e in entries if e.is_dir() and not skipped_name(e.name)}
    layout = [s for s in FOLDER_SPLITS if s in subdirs]
    others = sorted(subdirs - set(FOLDER_SPLITS))
    if layout and others:
        warn_once("%s: read as one folder per class, %s among them; its folders %s are not all splits "
                    "(a split folder holds train/val/test only)", path, ", ".join(layout),
                    ", ".join(others[:5]) + (", ..." if len(others) > 5 else ""))
        return []
    return layout


def folder_split(path: Path, split: str) -> Path:
    """The folder that split ``split`` of the image folder ``path`` reads: ``path/split``; ``path/val`` for
    ``test`` in a folder laid out train/val, as ImageNet is (its val is the held-out split); ``path`` itself when it
    has no split folders (flat, or one folder per class, even if a class is named like a split: see
    :func:`split_folders`). A folder split into some of train/val/test but not ``split`` is an error naming the
    splits it has: read as one folder, its split names would be the labels."""
    layout = split_folders(path)
    if not layout:
        return path
    if split in layout:
        return path / split
    if split == "test" and "val" in layout:
        log.info("%s has no test/ split: using val/", path)
        return path / "val"
    raise ValueError(f"{path}: no {split!r} split; the folder is split into {', '.join(layout)}: name one of them "
                     f"(ssl-probe --train-split / --test-split, ssl-cluster --split, data.split, data.eval_split)")


def load_imagenet(split: str = "train", transform=None, root=None, verify: str = "header") -> ImageFolderDataset:
    """ILSVRC2012 as ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (val sorted into
    class folders, e.g. with the usual valprep.sh). ``split`` is ``train`` or ``val``."""
    if split not in ("train", "val"):
        raise ValueError(f"imagenet: unknown split {split!r}; valid splits: train, val")
    folder = Path(root if root is not None else "data/imagenet") / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"imagenet/{split}: {folder} not found. Expected ILSVRC2012 as {folder.parent}/train/<wnid>/*.JPEG "
            f"and {folder.parent}/val/<wnid>/*.JPEG (get it from https://image-net.org after accepting "
            f"its terms; sort val/ into class folders). Pass root=... to point elsewhere.")
    dataset = ImageFolderDataset(folder, transform, verify=verify, name=f"imagenet/{split}")
    if dataset.classes is None:
        raise ValueError(f"imagenet/{split}: {folder} has images at its top level; expected one folder per "
                         f"class (for val/, sort the 50,000 images into their class folders first)")
    return dataset


def folder_image_size(dataset: ImageFolderDataset) -> tuple[int, int]:
    """``(size, median short side)`` of a sample of the folder's images (headers only): the median
    short side rounded to a multiple of ``SIZE_STEP``, between 16 and ``FOLDER_MAX_SIZE``."""
    paths = [p for p, _ in dataset.samples]
    sides = []
    for i in spread_indices(len(paths), SIZE_SAMPLE):
        try:
            with Image.open(paths[i]) as img:
                sides.append(min(img.size))
        except (OSError, ValueError):
            continue   # broken after the check: the dataset skips it at run time
    median = int(np.median(sides)) if sides else FOLDER_MAX_SIZE
    return int(np.clip(round(median / SIZE_STEP) * SIZE_STEP, 16, FOLDER_MAX_SIZE)), median
