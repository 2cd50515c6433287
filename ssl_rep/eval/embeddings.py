"""Embeddings for other tools: a dataset's features in a fixed order, on disk, resumable.

``embed(encoder, dataset, out)`` writes ``out/embeddings.npy`` (an ``.npy`` file, so ``np.load(...,
mmap_mode="r")`` maps it; float32 or float16), ``out/index.csv`` (row, path or sample number, label and class
where known) and ``out/embed.json`` (encoder fingerprint, dataset, rows done). It works in pieces of ``chunk``
images, flushing each and then recording it as done, so a run that is stopped (Ctrl-C, SIGKILL) continues from
its last finished piece when called again with the same encoder and dataset; a different encoder or dataset in
the same folder is refused rather than mixed in.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import _dataset_key, encoder_fingerprint, extract_features

DTYPES = {"float32": np.float32, "float16": np.float16}


def sample_names(dataset) -> list[str]:
    """Each sample's file path where the dataset has files, else its number in the dataset."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [str(path) for path, _ in samples]
    return [str(i) for i in range(len(dataset))]


def _labels(dataset) -> np.ndarray | None:
    labels = getattr(dataset, "labels", None)
    if labels is None and getattr(dataset, "samples", None) is not None:
        labels = [y for _, y in dataset.samples]
    return None if labels is None else np.asarray(labels)


def embed(encoder: torch.nn.Module, dataset, out, dtype: str = "float32", batch_size: int = 256, device=None,
          num_workers: int = 0, chunk: int = 8192, progress: bool = True) -> Path:
    """Write ``dataset``'s features under ``encoder`` to ``out`` (see the module's docstring); returns the path of
    ``embeddings.npy``."""
    if dtype not in DTYPES:
        raise ValueError(f"embedding dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 image, got {chunk}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{getattr(dataset, 'name', 'the dataset')}: no images to embed")
    state_path, array_path = out / "embed.json", out / "embeddings.npy"
    dim = encoder.num_features
    if dim is None:   # pixels: as wide as the images the dataset gives
        with torch.no_grad():
            dim = encoder(dataset[0][0][None]).shape[1]
    identity = {"encoder": encoder_fingerprint(encoder), "encoder_name": getattr(encoder, "encoder_name", None),
                "dataset": _dataset_key(dataset), "n": n, "dim": int(dim), "dtype": dtype}
    done = 0
    if state_path.is_file() and array_path.is_file():
        state = json.loads(state_path.read_text())
        if {k: state.get(k) for k in identity} != identity:
            differ = [k for k in identity if state.get(k) != identity[k]]
            raise ValueError(f"{out}: holds embeddings of another run (its {', '.join(differ)} differ); "
                             f"use another --out or delete {state_path}")
        done = int(state["done"])
        array = np.load(array_path, mmap_mode="r+")
    else:
        array = np.lib.format.open_memmap(array_path, mode="w+", dtype=DTYPES[dtype], shape=(n, identity["dim"]))
    bar = tqdm(total=n, initial=done, desc="embedding", unit="img", disable=not progress)
    while done < n:
        stop = min(n, done + chunk)
        piece = torch.utils.data.Subset(dataset, range(done, stop))
        feats, _ = extract_features(encoder, piece, batch_size=batch_size, device=device, num_workers=num_workers,
                                    progress=False)
        array[done:stop] = np.asarray(feats).astype(DTYPES[dtype])
        array.flush()
        done = stop
        tmp = state_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({**identity, "done": done}))
        os.replace(tmp, state_path)   # recorded only once its rows are on disk
        bar.update(stop - bar.n)
    bar.close()
    labels, classes = _labels(dataset), getattr(dataset, "classes", None)
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "sample", "label", "class"])
        for row, name in enumerate(sample_names(dataset)):
            label = int(labels[row]) if labels is not None else -1
            cls = classes[label] if classes is not None and 0 <= label < len(classes) else ""
            writer.writerow([row, name, label if label >= 0 else "", cls])
    return array_path
