"""The training loop: one function, :func:`train`, from a Config to a checkpointed encoder."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_save, encoder_payload
from .config import Config
from .distributed import barrier
from .schedule import lr_at
from .setup import Run, setup_run, to_device
from .steplog import NonFiniteLossError, StepLog

__all__ = ["DeviceMemoryError", "NonFiniteLossError", "TrainResult", "train"]


class DeviceMemoryError(RuntimeError):
    """The accelerator ran out of memory; the message names the batch size and a smaller one to try."""


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    encoder_path: Path
    steps: int
    final_loss: float
    online_probe_acc: float | None
    labelled: bool = True   # the training data has labels, so ssl-probe can read it


def train(cfg: Config, resume: bool = False, progress: bool | None = None, overwrite: bool = False) -> TrainResult:
    """Pretrain ``cfg.encoder`` with ``cfg.method`` on ``cfg.data``; writes everything under ``cfg.out_dir``.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` (every
    ``trainer.checkpoint_every`` steps and at the end) and ``encoder.pt``. With ``resume`` it
    continues from ``checkpoints/last.pt`` exactly where that run stopped. Without it, an ``out_dir`` that
    already holds a run is an error, which ``overwrite`` turns into replacing that run.
    """
    run = setup_run(cfg, resume, overwrite)
    method, probe, optimizer, tc = run.method, run.probe, run.optimizer, cfg.trainer
    steplog = StepLog(run.out, run.dist, run.total, run.step, run.resumed, tc.log_every,
                      cfg.data.batch_size * run.dist.world_size, f"{cfg.method.name}/{cfg.encoder.name}",
                      progress if progress is not None else sys.stderr.isatty(),
                      hint=f"Try a lower optim.lr (now {cfg.optim.lr}), optim.grad_clip, or trainer.precision=fp32")
    probe_acc = None
    method.train()
    try:
        while run.step < run.total:
            run.sampler.set_epoch(run.epoch, run.batch_in_epoch)
            for batch in run.loader:
                lr = lr_at(run.step, cfg.optim.lr, run.total, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                images, labels = to_device(batch, run.device, run.channels_last)
                with run.autocast():
                    out = run.model((images, labels))
                loss, logs = out
                features = getattr(out, "features", None)
                optimizer.zero_grad(set_to_none=True)
                if probe is not None and features is not None:
                    probe.set_lr(lr / cfg.optim.lr)
                    loss_all = loss + probe.loss(features, labels)   # features are detached: reaches only the probe
                else:
                    loss_all, features = loss, None
                loss_all.backward()
                if cfg.optim.grad_clip:
                    nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                if features is not None:
                    probe.step()
                run.step += 1
                run.batch_in_epoch += 1
                method.after_step(run.step, run.total)
                steplog.add(loss)
                epoch_done = run.batch_in_epoch == run.steps_per_epoch
                if steplog.due(run.step, epoch_done):
                    scores = probe.end_epoch(method.encoder, cfg.data.batch_size, run.autocast) \
                        if epoch_done and probe is not None else {}
                    probe_acc = scores.get("online_probe_acc", scores.get("online_probe_train_acc", probe_acc))
                    steplog.record(run.step, run.epoch, lr, logs, scores)
                if epoch_done:
                    run.epoch, run.batch_in_epoch = run.epoch + 1, 0
                steplog.progress(run.step, run.epoch, lr)
                if run.step % tc.checkpoint_every == 0 and run.step < run.total:
                    steplog.flush(run.step, run.epoch)   # never checkpoint weights a NaN has reached
                    run.save()
                if run.step >= run.total:
                    break
        steplog.flush(run.step, run.epoch)
        checkpoint = run.save()
        if run.dist.is_main:
            atomic_save(encoder_payload(method.encoder, run.preprocess), run.out / "encoder.pt")
        barrier(run.dist)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one; a CPU allocation failure another
        if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(exc)):
            raise
        raise DeviceMemoryError(out_of_memory_message(run)) from None
    finally:
        steplog.close()
    final = steplog.last_loss if math.isfinite(steplog.last_loss) else float("nan")
    return TrainResult(run.out, checkpoint, run.out / "encoder.pt", run.step, final, probe_acc, run.labelled)


def out_of_memory_message(run: Run) -> str:
    cfg, device = run.cfg, run.device
    where = str(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where = f"{torch.cuda.get_device_name(device)}, {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free now"
    smaller = max(1, cfg.data.batch_size // 2)
    return (f"out of memory on {where} at step {run.step + 1} with data.batch_size={cfg.data.batch_size} "
            f"(image size {cfg.data.image_size or 'native'}). Try data.batch_size={smaller} (and optim.lr halved "
            f"for SGD/LARS), trainer.precision=bf16, or a smaller data.image_size. Checkpoints already written "
            f"are kept in {run.out / 'checkpoints'}")
