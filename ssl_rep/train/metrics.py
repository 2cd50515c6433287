"""Run logs: ``metrics.jsonl`` (one JSON object per logging step), TensorBoard when installed."""
from __future__ import annotations

import json
import math
from pathlib import Path


class OutputError(RuntimeError):
    """A run's log could not be written (disk full, permissions); the message says what is intact."""


class MetricsLog:
    """Appends JSON lines to ``OUT/metrics.jsonl``. On resume, lines past the checkpoint's step are
    dropped first, so the file reads as one uninterrupted run."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", buffering=1)
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tensorboard = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except (ImportError, ModuleNotFoundError):
            pass

    def write(self, record: dict) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in record.items()}
        try:
            self.file.write(json.dumps(clean) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot append to {self.path} at step {record.get('step')}: {exc}; stopped. "
                              f"Checkpoints already written in {self.path.parent / 'checkpoints'} are intact: "
                              f"free space (or fix permissions) and run again with --resume") from exc
        if self.tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _step_of(line: str):
    try:
        return json.loads(line).get("step")
    except (json.JSONDecodeError, AttributeError):
        return None


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
