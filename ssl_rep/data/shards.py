"""Image sets packed into WebDataset tar shards: sequential reads at full disk speed for ImageNet-size data.

Writer: :func:`write_shards` packs an image folder (or an ImageNet split) into
``OUT/shard-000000.tar, ...``; each sample is the file's original bytes (no re-encoding) under its
extension plus its class index (``cls``), and ``OUT/shards.json`` records the counts, the class
names and the files that were skipped. Files are checked with the folder reader's rules first, so
a bad file never reaches a shard.

Reader: :class:`ShardDataset` streams ``(image, label)`` from the shards with the ``webdataset``
library: shards are split across torch.distributed processes and DataLoader workers, shuffled per
epoch, and samples pass through a shuffle buffer. Decoding follows :func:`~ssl_rep.data.load_rgb`
(RGB, EXIF, bomb limit); a sample that fails is counted and skipped. For evaluation,
:class:`IndexedShards` reads the same files by sample number (writing order), so features line up
with samples and reports can show any image.

    python -m ssl_rep.data.shards SRC_FOLDER OUT_DIR [--max-count 10000]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset
from tqdm.auto import tqdm

from .base import mix_seed
from .decode import ImageDecodeError, decode_rgb
from .device_decode import encode_for_device
from .folder import ImageFolderDataset
from .transforms import to_tensor

log = logging.getLogger("ssl_rep.data")
SHARD_PATTERN = "shard-%06d.tar"
INDEX = "shards.json"


def write_shards(source, out_dir: str | os.PathLike, max_count: int = 10_000, max_size: float = 1e9,
                 progress: bool = True) -> dict:
    """Pack ``source`` (an :class:`ImageFolderDataset`, or a folder path) into tar shards under ``out_dir``.

    Returns (and writes to ``out_dir/shards.json``) the shard names, sample counts, classes and skipped files.
    """
    import webdataset as wds

    dataset = source if isinstance(source, ImageFolderDataset) else ImageFolderDataset(source, verify="full")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if list(out.glob("shard-*.tar")):
        raise FileExistsError(f"{out} already holds shards; write to an empty folder")
    counts: list[int] = []
    with wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=max_count, maxsize=max_size, verbose=0) as sink:
        for i, (path, label) in enumerate(tqdm(dataset.samples, desc="writing shards", unit="img",
                                               disable=not progress or len(dataset.samples) < 1000)):
            ext = Path(path).suffix.lower().lstrip(".") or "img"
            sink.write({"__key__": f"{i:09d}", ext: Path(path).read_bytes(), "cls": str(label).encode()})
            shard = sink.shard - 1   # ShardWriter counts the shards it has opened
            counts.extend([0] * (shard + 1 - len(counts)))
            counts[shard] += 1
    index = {"format": "ssl_rep.shards/1", "shards": [SHARD_PATTERN % k for k in range(len(counts))],
             "counts": counts, "total": sum(counts), "classes": dataset.classes, "labels": dataset.labels,
             "skipped": [{"file": f, "reason": r} for f, r in dataset.bad_files]}
    (out / INDEX).write_text(json.dumps(index, indent=1))
    return index


class ShardDataset(IterableDataset):
    """Streams ``(transform(RGB image), label)`` from the shards :func:`write_shards` made.

    ``shuffle_buffer``: samples mixed in a buffer of this size (0: shard order); shards are reshuffled
    each :meth:`set_epoch`. Under torch.distributed each process reads its own shards (``rank`` and
    ``world_size`` default to the process group's), and DataLoader workers split those further; give
    every process at least one shard per worker.
    """

    def __init__(self, folder: str | os.PathLike, transform=None, shuffle_buffer: int = 1000, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.transform, self.shuffle_buffer, self.seed, self.epoch = transform, shuffle_buffer, seed, 0
        initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if initialised else 0)
        self.world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if initialised else 1)
        self.classes = self.index.get("classes")
        self.name = f"shards:{self.folder}"
        self.bad_samples: list[tuple[str, str]] = []
        self.encoded = False   # True: yield (kind, payload, label, seed, name) for decoding on the device

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def labels(self) -> list[int]:
        """Every sample's label in writing order (-1 where unlabeled), from shards.json."""
        return self.index.get("labels") or [-1] * self.index["total"]

    def rank_count(self, rank: int) -> int:
        return sum(c for k, c in enumerate(self.index["counts"]) if k % self.world_size == rank)

    def __len__(self) -> int:
        """Samples in this process's shards."""
        return self.rank_count(self.rank)

    def _my_shards(self) -> list[str]:
        shards = [str(self.folder / name) for k, name in enumerate(self.index["shards"])
                  if k % self.world_size == self.rank]
        order = torch.randperm(len(shards), generator=torch.Generator().manual_seed(self.seed + 1009 * self.epoch))
        return [shards[i] for i in order.tolist()]

    def _decode(self, sample: dict):
        image_key = next((k for k in sample if not k.startswith("__") and k != "cls"), None)
        name = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        try:
            if image_key is None:
                raise ImageDecodeError(f"{name}: no image in the sample")
            if self.encoded:
                kind, payload = encode_for_device(sample[image_key], f"{name}.{image_key}")
            else:
                img = decode_rgb(sample[image_key], f"{name}.{image_key}")
        except ImageDecodeError as exc:
            self.bad_samples.append((name, str(exc)))
            log.warning("skipping undecodable sample (%d so far): %s", len(self.bad_samples), exc)
            return None
        label = int(sample["cls"]) if "cls" in sample else -1
        key = sample.get("__key__", "0")
        # Sample i of epoch e is augmented under its own seed, whatever the workers and wherever a
        # run was resumed (as the DataLoader path's SeededAugment does). crc32, not hash(): str
        # hashes differ between processes.
        seed = mix_seed(self.seed, self.epoch, int(key) if key.isdigit() else zlib.crc32(key.encode()))
        if self.encoded:   # data.decode_on=device: the training process decodes and augments
            return kind, payload, label, seed, name
        if self.transform is None:
            return to_tensor(img), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img), label

    def __iter__(self):
        import webdataset as wds

        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self._my_shards()),
            wds.split_by_worker,
            wds.tarfile_to_samples(),
            *([wds.shuffle(self.shuffle_buffer, rng=_seeded(self.seed, self.epoch))] if self.shuffle_buffer else []),
        )
        for sample in pipeline:
            item = self._decode(sample)
            if item is not None:
                yield item


def read_index(folder: Path) -> dict:
    try:
        return json.loads((folder / INDEX).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FileNotFoundError(f"{folder}: no {INDEX} (write shards with "
                                f"`python -m ssl_rep.data.shards SRC OUT`): {exc}") from exc


class IndexedShards(Dataset):
    """Sample ``i`` of the shards (writing order) as ``(transform(RGB image), label)``, read directly
    from its place in the tar file: a map-style dataset for evaluation, where features must come out
    in a fixed order and a report may show any sample. The tar headers are read once, here."""

    def __init__(self, folder: str | os.PathLike, transform=None):
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.transform, self.classes = transform, self.index.get("classes")
        self.name = f"shards:{self.folder}"
        self.members: list[tuple[str, int, int, str]] = []   # (tar path, data offset, size, shown name)
        for shard in self.index["shards"]:
            path = str(self.folder / shard)
            try:
                with tarfile.open(path) as tar:
                    self.members += [(path, m.offset_data, m.size, f"{shard}:{m.name}") for m in tar
                                     if m.isfile() and not m.name.endswith(".cls")]
            except (OSError, tarfile.TarError) as exc:
                raise FileNotFoundError(f"{path}: cannot read shard ({exc})") from exc
        if len(self.members) != self.index["total"]:
            raise ValueError(f"{self.folder}: {INDEX} lists {self.index['total']} samples but the shards hold "
                             f"{len(self.members)} images; write the shards again")
        self.labels = np.asarray(self.index.get("labels") or [-1] * len(self.members), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.members)

    def image(self, i: int):
        """Sample ``i`` as an RGB PIL image."""
        path, offset, size, name = self.members[i]
        with open(path, "rb") as f:
            f.seek(offset)
            return decode_rgb(f.read(size), name)

    def __getitem__(self, i: int):
        img = self.image(i)
        return (self.transform(img) if self.transform is not None else to_tensor(img)), int(self.labels[i])


def _seeded(seed: int, epoch: int):
    import random
    worker = torch.utils.data.get_worker_info()
    return random.Random(seed * 1_000_003 + epoch * 101 + (worker.id if worker else 0))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ssl_rep.data.shards",
                                     description="Pack an image folder (or ImageNet split) into WebDataset tar shards.")
    parser.add_argument("source", help="image folder (class subfolders give labels)")
    parser.add_argument("out", help="empty output folder")
    parser.add_argument("--max-count", type=int, default=10_000, help="samples per shard")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    index = write_shards(args.source, args.out, args.max_count)
    print(f"wrote {index['total']} samples in {len(index['shards'])} shards to {args.out} "
          f"({len(index['skipped'])} files skipped)")


if __name__ == "__main__":
    main()
