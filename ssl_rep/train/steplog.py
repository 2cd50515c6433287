"""The step log: per-step losses kept on the device, a ``metrics.jsonl`` line per logging step, a
progress bar (or a printed line when not on a terminal), and the NaN guard.

A logging step queues a copy of its values to the host and writes the *previous* logging step's
record, whose copy arrived long ago, so logging never drains a GPU's queue (a wait every few steps
leaves the GPU idle while the host launches the next step). On the CPU the copy is immediate.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .distributed import DistInfo, mean_over_ranks
from .metrics import MetricsLog


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class HostCopy:
    """Device values copied to the host without waiting for the device."""

    def __init__(self, values: torch.Tensor):
        self.event = None
        if values.is_cuda:
            self.host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.host.copy_(values, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = values

    def ready(self) -> bool:
        """Whether the values are on the host (reading them now would not wait)."""
        return self.event is None or self.event.query()

    def tolist(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class StepLog:
    """``add`` every step; ``record`` at logging steps (see :meth:`due`); ``flush`` before a checkpoint
    and at the end. Every process calls these (losses are averaged over processes); rank 0 writes.
    ``hint`` completes the NaN message (what to change)."""

    def __init__(self, out: Path, dist_info: DistInfo, total: int, start_step: int, resumed: bool, log_every: int,
                 images_per_step: int, desc: str, interactive: bool, hint: str):
        self.out, self.dist, self.total, self.log_every = out, dist_info, total, log_every
        self.images_per_step, self.hint = images_per_step, hint
        self.metrics = MetricsLog(out, resume_step=start_step if resumed else None) if dist_info.is_main else None
        self.interactive = interactive and dist_info.is_main
        self.bar = tqdm(total=total, initial=start_step, desc=desc, unit="step", disable=not self.interactive,
                        dynamic_ncols=True)
        self.print_every = max(1, total // 20)
        self.start = self.window_start = time.time()
        self.window: list[torch.Tensor] = []
        self.pending = None   # the last logging step's record, its values still on their way to the host
        self.last_loss = float("nan")

    def add(self, loss: torch.Tensor) -> None:
        self.window.append(loss.detach())

    def due(self, step: int, epoch_done: bool) -> bool:
        return step % self.log_every == 0 or step == self.total or step == 1 or epoch_done

    def record(self, step: int, epoch: int, lr: float, logs: dict, extra: dict) -> None:
        """Queue the record of the steps since the last one: their mean loss, the method's ``logs``
        (0-d tensors, read when the copy arrives) and ``extra`` (host numbers, e.g. probe scores)."""
        self.write_pending()
        now = time.time()
        keys = [k for k in logs if k != "loss"]
        device = self.window[-1].device
        values = torch.stack([v.float() for v in self.window]
                             + [torch.as_tensor(logs[k], device=device).float().reshape(()) for k in keys])
        rec = {"step": step, "epoch": epoch, "lr": lr,
               "images_per_s": self.images_per_step * len(self.window) / max(now - self.window_start, 1e-9),
               "elapsed": now - self.start, **extra}
        self.pending = (HostCopy(mean_over_ranks(values, self.dist)), rec, len(self.window), keys)
        self.window_start, self.window = now, []

    def write_pending(self) -> None:
        """Complete the last logging step's record with its values, check them, write it."""
        if self.pending is None:
            return
        copy, rec, n_losses, keys = self.pending
        self.pending = None
        values = copy.tolist()
        losses = values[:n_losses]
        self.check_finite(losses, rec["step"], rec["epoch"])
        self.last_loss = losses[-1]
        rec.update(loss=sum(losses) / n_losses, **dict(zip(keys, values[n_losses:])))
        if self.metrics is not None:
            self.metrics.write(rec)
        self.bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{rec['lr']:.3g}", refresh=False)

    def flush(self, step: int, epoch: int) -> None:
        """Write what is pending and check the steps not yet logged: nothing a NaN reached gets saved."""
        self.write_pending()
        if self.window:
            self.check_finite(mean_over_ranks(torch.stack(self.window).float(), self.dist).tolist(), step, epoch)

    def check_finite(self, values: list[float], step: int, epoch: int) -> None:
        """``values``: the losses of the steps up to ``step``, averaged over processes (every process
        sees, and stops on, the same values)."""
        for i, value in enumerate(values):
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"loss became {value} at step {step - len(values) + i + 1} (epoch {epoch}); stopped. The last "
                    f"good checkpoint is kept in {self.out / 'checkpoints'}. {self.hint}")

    def progress(self, step: int, epoch: int, lr: float) -> None:
        self.bar.update(1)
        if self.dist.is_main and not self.interactive and (step % self.print_every == 0 or step == self.total):
            if self.pending is not None and self.pending[0].ready():
                self.write_pending()   # already on the host (always on CPU): print the newest loss
            shown = "(on its way)" if math.isnan(self.last_loss) else f"{self.last_loss:.4f}"
            print(f"step {step}/{self.total} epoch {epoch} loss {shown} lr {lr:.4g} "
                  f"elapsed {time.time() - self.start:.0f}s", flush=True)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
