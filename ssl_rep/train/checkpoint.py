"""Checkpoints that resume exactly and never tear.

``OUT/checkpoints/last.pt`` (and ``step_<7-digit step>.pt``, the last K kept) holds: the method's weights
(encoder + heads), the optimiser, the online probe, the step, the epoch and the position in that
epoch's data order, the RNG states (python, numpy, torch, cuda), the resolved config, the git
revision and library versions. ``OUT/encoder.pt`` holds the encoder alone (name, kwargs, weights)
for :func:`ssl_rep.load_encoder`. Only tensors and plain data are stored, so everything loads with
``torch.load(..., weights_only=True)``; every file is written to a temp file, fsynced and renamed.
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..encoders.io import CHECKPOINT_FORMAT, CheckpointError, encoder_payload, safe_load  # noqa: F401


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {path}: {exc}; stopped. The previous checkpoint is intact: free "
                                  f"space (or fix permissions) and run again with --resume") from exc
        raise


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def library_versions() -> dict:
    import torchvision

    import ssl_rep
    return {"ssl_rep": ssl_rep.__version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "numpy": np.__version__, "python": platform.python_version()}


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out_dir: Path, state: dict, step: int, keep: int) -> Path:
    """Write ``step_<7-digit step>.pt`` and ``last.pt`` atomically; prune older step files beyond ``keep``."""
    folder = Path(out_dir) / "checkpoints"
    state = {"format": CHECKPOINT_FORMAT, "git_revision": git_revision(), "versions": library_versions(),
             "rng": rng_state(), **state}
    step_file = folder / f"step_{step:07d}.pt"
    atomic_save(state, step_file)
    link = folder / f".last.pt.{os.getpid()}.tmp"
    try:  # last.pt shares the step file's bytes (a hard link, renamed into place atomically)
        link.unlink(missing_ok=True)
        os.link(step_file, link)
        os.replace(link, folder / "last.pt")
    except OSError:  # a filesystem without hard links: write it again
        link.unlink(missing_ok=True)
        atomic_save(state, folder / "last.pt")
    for old in sorted(folder.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return folder / "last.pt"


def load_checkpoint(path: str | Path) -> dict:
    state = safe_load(path)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an ssl_rep training checkpoint (format {state.get('format')!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    return state
