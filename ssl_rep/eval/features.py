"""Frozen-feature extraction, with an optional memory-mapped on-disk cache."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from ..data.host_memory import keep_freed_memory

RESIDENT_BYTES = 1 << 30       # in-memory sets up to this size are copied to the GPU once for extraction
PENDING_BYTES = 64 << 20       # features wait on the device up to this size, then come back in one copy
# Experimental, off by default until measured on a GPU (eval/bench_extract.py has a row for it): a resident set
# goes up in this many pieces, each piece's copy issued on a side stream once the previous piece's batches are
# queued, so the copy overlaps their forward passes instead of preceding them all.
UPLOAD_CHUNKS = 0


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A hash of the encoder's name, kwargs and weights: the cache key's first part."""
    h = hashlib.sha1()
    h.update(json.dumps([getattr(encoder, "encoder_name", type(encoder).__name__),
                         getattr(encoder, "encoder_kwargs", {})], sort_keys=True, default=str).encode())
    for key, tensor in encoder.state_dict().items():
        h.update(key.encode())
        if not isinstance(tensor, torch.Tensor):   # packed int8 parameters of a quantized encoder
            h.update(repr(tensor).encode())
            continue
        tensor = tensor.int_repr() if tensor.is_quantized else tensor
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _dataset_key(dataset) -> str:
    transform = getattr(dataset, "transform", None)
    return json.dumps([getattr(dataset, "name", type(dataset).__name__), len(dataset), repr(transform)])


def _ten_crops(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, 10, C, h, h)`` with ``h = H * 224 / 256`` (the 256 -> 224 ratio)."""
    size = int(round(x.shape[-1] * 224 / 256))
    crop = T.TenCrop(size)
    return torch.stack([torch.stack(crop(img)) for img in x])


def chunked_upload(images: np.ndarray, batch_size: int, chunks: int, device: torch.device):
    """``(start, uint8 batch on the device)`` over ``images``, uploaded in ``chunks`` pieces of whole batches.
    On CUDA each piece after the first is copied on a side stream when the consumer asks for its first batch,
    that is once every batch of the piece before it has been handed out (and its forward pass queued); the
    device's current stream waits for the copy before any kernel that reads it."""
    from ..data.base import stored_tensor
    n = len(images)
    per = -(-n // max(1, chunks))
    per = max(1, -(-per // batch_size)) * batch_size    # pieces hold whole batches (and an empty set none)
    cuda = device.type == "cuda"
    side = torch.cuda.Stream(device) if cuda else None
    for lo in range(0, n, per):
        src = stored_tensor(images[lo:lo + per])
        if cuda:
            main = torch.cuda.current_stream(device)
            with torch.cuda.stream(side):
                piece = src.to(device, non_blocking=True)
            main.wait_stream(side)
            piece.record_stream(main)
        else:
            piece = src.to(device)
        for start in range(0, len(piece), batch_size):
            yield lo + start, piece[start:start + batch_size]


def batched_source(dataset, batch_size: int, device: torch.device, upload_chunks: int | None = None):
    """For an in-memory dataset whose transform is ``eval``/``none`` at the native size: batches made
    from the uint8 array directly (to the device, scale, normalise), with no per-image PIL work.
    Returns None when the dataset's transform does anything else. ``upload_chunks`` (default
    ``UPLOAD_CHUNKS`` for a set that goes to the GPU whole): upload in that many overlapped pieces."""
    from ..data.base import ArrayImageDataset, stored_bytes, stored_channels, stored_tensor
    from ..data.transforms import mean_std
    spec = getattr(getattr(dataset, "transform", None), "batched_spec", None)
    if not isinstance(dataset, ArrayImageDataset) or spec is None:
        return None
    h, w = dataset.images.shape[1:3]
    if (spec["resize"] and spec["resize"] != min(h, w)) or (spec["size"] and (spec["size"], spec["size"]) != (h, w)):
        return None
    mean, std = mean_std(spec["stats"], device)
    scale, shift = 1 / (255 * std), -mean / std   # (x / 255 - mean) / std as one multiply-add
    labels = torch.as_tensor(np.asarray(dataset.labels))

    # A set that fits comfortably goes to the GPU in one copy; larger ones in pinned batches (each copy is queued
    # behind the previous batch's kernels, and the host pins the next batch while the device works).
    stored = stored_channels(dataset.images)   # a gray set: its one channel, repeated on the device
    whole = device.type == "cuda" and stored_bytes(stored) <= RESIDENT_BYTES
    chunks = upload_chunks if upload_chunks is not None else (UPLOAD_CHUNKS if whole else 0)

    def raw_batches():
        if chunks:
            yield from chunked_upload(stored, batch_size, chunks, device)
            return
        images = stored_tensor(stored).to(device) if whole else None
        for start in range(0, len(dataset), batch_size):
            if whole:
                yield start, images[start:start + batch_size]
                continue
            raw = stored_tensor(stored[start:start + batch_size])
            yield start, raw.pin_memory() if device.type == "cuda" else raw

    class Batches:
        def __len__(self):
            return -(-len(dataset) // batch_size)

        def __iter__(self):
            for start, raw in raw_batches():
                # NCHW like the training loop's batches: the permuted view would otherwise make the batch, and the
                # encoder's activations after it, channels-last, and its convolutions pick other kernels
                x = raw.to(device, non_blocking=True).permute(0, 3, 1, 2).expand(-1, 3, -1, -1)
                x = x.to(torch.float32, memory_format=torch.contiguous_format)
                yield torch.addcmul(shift, x, scale), labels[start:start + batch_size]

    return Batches()


@torch.no_grad()
def extract_features(encoder: torch.nn.Module, dataset, batch_size: int = 256, device=None, ten_crop: bool = False,
                     num_workers: int = 0, cache_dir: str | os.PathLike | None = None, progress: bool = True):
    """Run a frozen encoder over a dataset: ``(features float32 (N, D), labels int64 (N,) or None)``.

    Eval mode, no gradients, bf16 autocast on GPU, a progress bar; on the CPU, freed memory kept for the next batch
    (:func:`ssl_rep.data.host_memory.keep_freed_memory`, process-wide). ``labels`` is None when the
    dataset has none (all -1). ``ten_crop``: each sample's features are the mean over 10 crops (the
    dataset may yield ``(10, C, H, W)`` from the ``ten_crop`` transform, or ``(C, H, W)`` images
    that are cut here). ``cache_dir``: features are written batch by batch into a memory-mapped
    ``.npy`` keyed by (encoder weights, dataset, split, transform, ten_crop), and the next call
    returns that memmap without running the encoder; RAM never has to hold all of them at once.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(encoder, "quantized", False):
        device = torch.device("cpu")   # int8 kernels run on the CPU
    cache = None
    if cache_dir is not None:
        key = hashlib.sha1(f"{encoder_fingerprint(encoder)}|{_dataset_key(dataset)}|{ten_crop}".encode()).hexdigest()[:20]
        cache = Path(cache_dir) / key
        if (cache / "features.npy").is_file() and (cache / "labels.npy").is_file():
            return _read_cache(cache)
    if device.type == "cpu":
        keep_freed_memory()   # large activations reused batch to batch, not faulted in again each time
    was_training = encoder.training
    encoder = encoder.eval().to(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    tmp_dir = None
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tmp_dir.mkdir(exist_ok=True)
    sink = _FeatureSink(len(dataset), tmp_dir, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    batched = None if ten_crop else batched_source(dataset, batch_size, device)
    for x, y in tqdm(batched or loader, desc="extracting features", unit="batch", disable=not progress or len(loader) < 5,
                     leave=False):
        x = x.to(device, non_blocking=True)
        crops = None
        if ten_crop:
            crops = x if x.ndim == 5 else _ten_crops(x)
            x = crops.flatten(0, 1)
        elif x.ndim == 5:
            raise ValueError("the dataset yields 10-crop stacks (B, 10, C, H, W); pass ten_crop=True")
        with autocast:
            f = encoder(x).float()
        if crops is not None:
            f = f.view(crops.shape[0], crops.shape[1], -1).mean(dim=1)
        sink.add(f, y)
    sink.drain()
    encoder.train(was_training)
    out, labels = sink.out, sink.labels
    if out is None:
        raise ValueError(f"extract_features: the dataset {getattr(dataset, 'name', '')!r} is empty")
    if tmp_dir is not None:
        out.flush()
        del out, sink
        return _publish_cache(tmp_dir, cache, labels, dataset)
    return out, (labels if (labels >= 0).any() else None)


class _FeatureSink:
    """Where :func:`extract_features` puts each batch's features: they wait on the device and come back to the host
    in one copy per ``PENDING_BYTES`` (one wait for the device; every batch on the CPU), into an array, or into a
    memory-mapped ``tmp_dir/features.npy`` when caching."""

    def __init__(self, n: int, tmp_dir: Path | None, device: torch.device):
        self.n, self.tmp_dir, self.on_cuda = n, tmp_dir, device.type == "cuda"
        self.out, self.labels, self.start = None, np.empty(n, dtype=np.int64), 0
        self.pending, self.pending_labels = [], []

    def add(self, features: torch.Tensor, labels) -> None:
        self.pending.append(features)
        self.pending_labels.append(np.asarray(labels))
        if not self.on_cuda or sum(p.numel() for p in self.pending) * 4 >= PENDING_BYTES:
            self.drain()

    def drain(self) -> None:
        if not self.pending:
            return
        f = torch.cat(self.pending).cpu().numpy()
        if self.out is None:
            shape = (self.n, f.shape[1])
            self.out = (np.lib.format.open_memmap(self.tmp_dir / "features.npy", mode="w+", dtype=np.float32,
                                                  shape=shape)
                        if self.tmp_dir is not None else np.empty(shape, dtype=np.float32))
        self.out[self.start:self.start + len(f)] = f
        self.labels[self.start:self.start + len(f)] = np.concatenate(self.pending_labels)
        self.start += len(f)
        self.pending.clear()
        self.pending_labels.clear()


def _publish_cache(tmp_dir: Path, cache: Path, labels: np.ndarray, dataset):
    """Move a finished entry from this process's ``tmp_dir`` to ``cache`` in one rename and read it back; where
    another process finished first, keep theirs."""
    np.save(tmp_dir / "labels.npy", labels)
    (tmp_dir / "key.json").write_text(_dataset_key(dataset))
    if cache.exists():
        shutil.rmtree(tmp_dir, ignore_errors=True)
    else:
        os.replace(tmp_dir, cache)
    return _read_cache(cache)


def _read_cache(cache: Path):
    """A cache entry's features (memory-mapped) and labels (None when the dataset has none)."""
    labels = np.load(cache / "labels.npy")
    return np.load(cache / "features.npy", mmap_mode="r"), (labels if (labels >= 0).any() else None)
