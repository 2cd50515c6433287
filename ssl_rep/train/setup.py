"""The run's setup: everything a training step needs, built from a Config (and restored from
``checkpoints/last.pt`` on resume), and how that state is saved."""
from __future__ import annotations

import inspect
import logging
import os
import random
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import dataset_id
from ..data.transforms import preprocessing
from ..encoders import create_encoder
from ..data.host_memory import keep_freed_memory
from ..methods import Method, create_method, method_class
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from .data import build_eval_dataset, build_train_dataset
from .distributed import DistInfo, barrier, gather_objects, init_distributed
from .loaders import build_loader
from .memory import check_step_fits, px_text
from .online_probe import OnlineProbe
from .optim import build_optimizer
from .sampling import mix_seed
from .schedule import lr_at

log = logging.getLogger("ssl_rep.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA GPU is available; use trainer.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc


CHANNELS_LAST_CPUS = ("AVX2", "AVX512")   # torch's CPU capabilities where channels_last trained faster in fp32


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix kernels in hardware (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def reuse_host_memory(cfg: Config, device: torch.device) -> bool:
    """Apply ``trainer.reuse_memory`` on the CPU (glibc's malloc keeps freed memory); whether it applied."""
    return device.type == "cpu" and cfg.trainer.reuse_memory and keep_freed_memory()


def fast_formats(cfg: Config, device: torch.device) -> tuple[bool, bool]:
    """``(bf16, channels_last)`` for the run: what the recipe says, and for ``auto`` what eval/bench_cpu_precision
    and eval/bench_vs_lightly measured fastest. bf16 on GPUs, and on CPUs that run it in hardware (AVX512-BF16 or
    AMX; elsewhere bf16 is emulated and slow); channels_last on CPUs with AVX2 or AVX-512 (oneDNN's blocked
    kernels), and not on older ones, where it was never measured."""
    precision = cfg.trainer.precision
    bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or native_bf16()))
    channels_last = cfg.trainer.channels_last
    if channels_last is None:
        channels_last = device.type == "cpu" and torch.backends.cpu.get_cpu_capability().startswith(CHANNELS_LAST_CPUS)
    return bf16, channels_last


def seed_everything(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def method_options(cfg: Config, size: int, num_classes: int) -> dict:
    """The recipe's method options, plus ``image_size`` and ``num_classes`` from the data where the
    method's constructor takes them and the recipe leaves them out."""
    options = dict(cfg.method.options)
    accepted = inspect.signature(method_class(cfg.method.name).__init__).parameters
    for key, value in (("image_size", size), ("num_classes", num_classes)):
        if key in accepted:
            options.setdefault(key, value)
    return options


def _flatten(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def check_resume_config(cfg: Config, saved: dict, path: Path) -> None:
    try:   # a key added to the config since that run was saved reads as its default, which is how the run ran
        saved = config_to_dict(config_from_dict(saved))
    except ConfigError:
        pass
    current, before = _flatten(config_to_dict(cfg)), _flatten(saved)
    changed = [k for k in current if not k.startswith("trainer.") and k != "out_dir" and current[k] != before.get(k)]
    if changed:
        raise ConfigError(f"--resume: the config differs from the one in {path} at {', '.join(changed)}; "
                          f"resume with the same config (only trainer.* may change) or use a new out_dir")


def to_device(batch, device: torch.device, channels_last: bool):
    images, labels = batch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    move = lambda t: t.to(device, non_blocking=True, memory_format=fmt)  # noqa: E731
    images = [move(v) for v in images] if isinstance(images, (list, tuple)) else move(images)
    return images, labels.to(device, non_blocking=True)


def check_labels(cfg: Config, labels: np.ndarray, num_classes: int) -> None:
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"method.name={cfg.method.name} needs a label in [0, {num_classes}) for every image; "
                          f"{cfg.data.dataset}/{cfg.data.split} has labels from {labels.min()} to "
                          f"{labels.max()} (-1 = unlabeled: use a labelled split or a self-supervised method)")


def wrap_model(cfg: Config, method: Method, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """What the loop calls: the method, under DDP with several processes, compiled if asked."""
    model = method
    if dist_info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=method.unused_parameters)
    return torch.compile(model) if cfg.trainer.compile else model


def sync_batchnorm(method: Method, world: int, device: torch.device) -> Method:
    if device.type != "cuda":
        raise ConfigError("trainer.sync_batchnorm=true needs CUDA: PyTorch's SyncBatchNorm refuses CPU tensors; "
                          "on CPUs use encoder.norm=group (or layer) for batch-independent normalisation")
    method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    log.info("trainer.sync_batchnorm: %d BatchNorm layers synchronise over %d process(es)",
             sum(isinstance(m, nn.SyncBatchNorm) for m in method.modules()), world)
    return method


@dataclass
class Run:
    """A run's state between steps: what the loop reads, and what a checkpoint holds."""

    cfg: Config
    out: Path
    dist: DistInfo
    device: torch.device
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    probe: OnlineProbe | None
    loader: object
    sampler: object
    size: int
    total: int
    autocast: Callable
    channels_last: bool = False
    labelled: bool = True   # any training image has a label (an unlabeled folder: none)
    dataset_size: int = 0   # images in the training set when the run started or resumed
    resumed: bool = False
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch   # global batches: every process steps together

    @property
    def preprocess(self) -> dict:
        """The input the encoder reads (dataset, mean/std, the image size it trained at), saved with it:
        ``encoder.preprocess``; ssl-probe and ssl-cluster read that dataset at that size."""
        return preprocessing(dataset_id(self.cfg.data.dataset), self.size)

    def state(self) -> dict:
        return {"model": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                **(self.probe.state_dict() if self.probe is not None else {"probe": {}, "probe_optimizer": {}}),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "dataset_size": self.dataset_size, "config": config_to_dict(self.cfg), "preprocess": self.preprocess,
                "encoder_spec": {"name": self.method.encoder.encoder_name,
                                 "kwargs": dict(self.method.encoder.encoder_kwargs)}}

    def restore(self, state: dict) -> None:
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.probe is not None and state.get("probe"):
            self.probe.load_state_dict(state)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        set_rng_state(per_rank[self.dist.rank] if len(per_rank) == self.dist.world_size else state["rng"])
        self.resumed = True

    def save(self) -> Path:
        """Every process takes part (its RNG state is gathered); rank 0 writes; all wait for it."""
        ranks_rng = gather_objects(rng_state(), self.dist)
        path = self.out / "checkpoints" / "last.pt"
        if self.dist.is_main:
            path = save_checkpoint(self.out, {**self.state(), "rng_per_rank": ranks_rng}, self.step,
                                   self.cfg.trainer.keep_checkpoints)
        barrier(self.dist)
        return path


def total_steps(trainer, batches_per_epoch: int) -> int:
    """Optimiser steps a run takes: ``trainer.max_steps`` if set, else its epochs' worth."""
    return trainer.max_steps or trainer.epochs * batches_per_epoch


def note_length_change(cfg: Config, saved: dict, step: int, total: int, batches_per_epoch: int) -> None:
    """On a resume that changes the run's length, say where the learning rate goes: the schedule is a function
    of the step and the total, so a longer run restarts the cosine higher than the saved run had reached."""
    try:
        old = config_from_dict(saved).trainer
    except ConfigError:
        return
    old_total = total_steps(old, batches_per_epoch)
    if old_total == total or step >= total:
        return
    before, after = (lr_at(step, cfg.optim.lr, t, cfg.schedule) for t in (old_total, total))
    if abs(after - before) > 0.01 * cfg.optim.lr:
        log.warning("resuming at step %d of %d (the saved run was set to %d steps): the learning rate goes from "
                    "%.3g to %.3g (%.2f of optim.lr), a warm restart; losses rise for a while before they fall "
                    "again", step, total, old_total, before, after, after / cfg.optim.lr)


def note_dataset_change(saved: int | None, now: int, source: str) -> None:
    """A warning when the training set has changed size since the checkpoint (images added to or removed from a
    folder): the data order of the rest of the run then differs from the one an uninterrupted run would have had."""
    if saved and saved != now:
        log.warning("resuming on %s with %d training images, %d when the run was saved: the rest of this epoch and "
                    "the later ones follow a new data order (the run goes on; it is no longer the uninterrupted "
                    "run's)", source, now, saved)


def load_resume_state(cfg: Config, out: Path, main: bool) -> dict:
    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {last}; start without --resume")
    state = load_checkpoint(last)
    check_resume_config(cfg, state["config"], last)
    for stale in last.parent.glob(".*.tmp") if main else ():  # half-written by a killed run; now removed
        stale.unlink(missing_ok=True)
    return state


TRAINING_OUTPUTS = ("checkpoints", "metrics.jsonl", "encoder.pt", "tensorboard")


def claim_out_dir(out: Path, overwrite: bool, main: bool) -> None:
    """A new run's ``out``: refused where it holds another run's checkpoint, which the new run would overwrite
    (and its metrics with it), unless ``overwrite``: then that run's training outputs are removed first."""
    last = out / "checkpoints" / "last.pt"
    if not last.is_file():
        return
    if not overwrite:
        raise CheckpointError(f"{out} already holds a run ({last}); a new run there would overwrite it: --resume "
                              f"to continue that run, --overwrite to start again in its place, or another out_dir")
    if main:
        present = [name for name in TRAINING_OUTPUTS if (out / name).exists()]
        log.warning("--overwrite: removing the previous run's %s from %s", ", ".join(present), out)
        for name in present:
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()


def setup_run(cfg: Config, resume: bool = False, overwrite: bool = False) -> Run:
    """Data, method, optimiser, online probe and loader for ``cfg``; on ``resume``, restored from
    ``out_dir/checkpoints/last.pt`` exactly where that run stopped; a new run in an ``out_dir`` that holds one is
    refused, or with ``overwrite`` replaces it (:func:`claim_out_dir`). Writes ``config.yaml``."""
    out = Path(cfg.out_dir)
    if resume and overwrite:
        raise ConfigError("--resume continues the run in out_dir and --overwrite replaces it: pick one")
    dist_info, device = init_distributed(resolve_device(cfg.trainer.device))
    rank, world, main = dist_info.rank, dist_info.world_size, dist_info.is_main
    if not resume:
        claim_out_dir(out, overwrite, main)
    state = load_resume_state(cfg, out, main) if resume else None
    # Model-side randomness (noise, masks) differs per process; DDP copies rank 0's initial weights.
    seed_everything(cfg.seed if rank == 0 else mix_seed(cfg.seed, rank), cfg.trainer.deterministic, device)

    dataset, size, num_classes, transform_name = build_train_dataset(cfg)
    labels = np.asarray(dataset.labels)
    if method_class(cfg.method.name).needs_labels:
        check_labels(cfg, labels, num_classes)
    method = create_method(cfg.method.name, create_encoder(cfg.encoder.name, **cfg.encoder.options),
                           **method_options(cfg, size, num_classes)).to(device)
    use_bf16, channels_last = fast_formats(cfg, device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if reuse_host_memory(cfg, device) and main:
        log.info("keeping freed memory for the next step (glibc malloc: no mmap for large blocks, no trim); "
                 "trainer.reuse_memory=false to leave malloc as it is")
    if cfg.trainer.sync_batchnorm and (world > 1 or device.type == "cuda"):   # one process: the same as BatchNorm
        method = sync_batchnorm(method, world, device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    if cfg.trainer.memory_check:
        n_views = getattr(dataset.transform, "n_views", 1)
        sizes = getattr(dataset.transform, "sizes", size)   # multi-crop: each view's side
        need = check_step_fits(method, cfg.data.batch_size, sizes, n_views, device, autocast,
                               channels_last, "bf16" if use_bf16 else "fp32")
        if main:
            log.info("a step needs about %.2f GiB (data.batch_size=%d, %d view(s) of %s px)", need / 2**30,
                     cfg.data.batch_size, n_views, px_text(sizes))
    probe = None
    if cfg.trainer.online_probe and (labels >= 0).any():
        held_out = build_eval_dataset(cfg, size, getattr(dataset, "classes", None)) if main else None
        probe = OnlineProbe(method.encoder.num_features, num_classes, device, bool((labels >= 0).all()), held_out,
                            cfg.data.num_workers)
    loader, sampler = build_loader(dataset, cfg, device, cfg.seed, rank, world, transform_name, size)
    total = total_steps(cfg.trainer, sampler.batches_per_epoch)
    if main and cfg.schedule.warmup_steps > total:
        log.warning("schedule.warmup_steps=%d is longer than the run (%d steps): the learning rate never "
                    "reaches optim.lr=%g (it ends at %.3g)", cfg.schedule.warmup_steps, total, cfg.optim.lr,
                    lr_at(total - 1, cfg.optim.lr, total, cfg.schedule))
    run = Run(cfg, out, dist_info, device, method, wrap_model(cfg, method, dist_info, device),
              build_optimizer(method, cfg.optim), probe, loader, sampler, size, total, autocast, channels_last,
              labelled=bool((labels >= 0).any()), dataset_size=len(dataset))
    if state is not None:
        run.restore(state)
        if main:
            note_length_change(cfg, state["config"], run.step, total, sampler.batches_per_epoch)
            note_dataset_change(state.get("dataset_size"), len(dataset), cfg.data.dataset)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if device.type == "cpu" and (cfg.trainer.precision == "auto" or cfg.trainer.channels_last is None):
            log.info("training in %s%s on this CPU (%s, bf16 in hardware: %s); trainer.precision=fp32 "
                     "trainer.channels_last=false for the plain fp32 loop", "bf16" if use_bf16 else "fp32",
                     " + channels_last" if channels_last else "", torch.backends.cpu.get_cpu_capability(),
                     "yes" if native_bf16() else "no")
    return run
