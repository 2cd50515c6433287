"""The training loop: one function, :func:`train`, from a Config to a checkpointed encoder."""
from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..data.base import ArrayImageDataset
from ..data.transforms import stats_for
from ..encoders import create_encoder
from ..methods import create_method
from .checkpoint import (CheckpointError, atomic_save, encoder_payload, load_checkpoint, rng_state, save_checkpoint,
                         set_rng_state)
from .config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from .data import build_eval_dataset, build_loader, build_train_dataset, mix_seed
from .distributed import barrier, gather_objects, init_distributed, mean_over_ranks
from .gpu_data import GPU_TRANSFORMS, GPUResidentLoader
from .memory import check_step_fits
from .metrics import MetricsLog
from .online_probe import ONLINE_PROBE_LR, eval_tensors, online_probe_head, probe_accuracy
from .optim import AdamW, build_optimizer
from .schedule import lr_at

log = logging.getLogger("ssl_rep.train")
GPU_RESIDENT_MAX_BYTES = 4 << 30


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint was kept."""


class DeviceMemoryError(RuntimeError):
    """The accelerator ran out of memory; the message names the batch size and a smaller one to try."""


def out_of_memory_message(cfg: Config, device: torch.device, step: int, out: Path) -> str:
    where = str(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where = f"{torch.cuda.get_device_name(device)}, {total / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free now"
    smaller = max(1, cfg.data.batch_size // 2)
    return (f"out of memory on {where} at step {step + 1} with data.batch_size={cfg.data.batch_size} "
            f"(image size {cfg.data.image_size or 'native'}). Try data.batch_size={smaller} (and optim.lr halved "
            f"for SGD/LARS), trainer.precision=bf16, or a smaller data.image_size. Checkpoints already written "
            f"are kept in {out / 'checkpoints'}")


class HostCopy:
    """Device values copied to the host without waiting for the device. A logging step reads the
    previous logging step's copy, which arrived long ago, so logging never drains the GPU's queue
    (a wait every few steps leaves the GPU idle while the host launches the next step)."""

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


@dataclass
class TrainResult:
    out_dir: Path
    checkpoint: Path
    encoder_path: Path
    steps: int
    final_loss: float
    online_probe_acc: float | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but no CUDA GPU is available; use trainer.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"trainer.device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from exc


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix kernels in hardware (AVX512-BF16 or AMX, through oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


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
    options = dict(cfg.method.options)
    if cfg.method.name == "autoencoder":
        options.setdefault("image_size", size)
    if cfg.method.name == "supervised":
        options.setdefault("num_classes", num_classes)
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


def use_gpu_resident(cfg: Config, dataset, device: torch.device, transform_name: str) -> bool:
    """Whether to keep the uint8 images on the training device and augment whole batches there.

    Despite the key's name this applies on the CPU too: batched tensor augmentation in the training
    process costs a few milliseconds per batch, where per-image PIL augmentation in worker processes
    takes ~1 ms of CPU per image, taken from the cores that run the model. The batched versions draw
    their parameters per image (SimCLR's resized crop is one ``grid_sample``; its colour jitter is
    torchvision's four adjustments, their order drawn per batch rather than per image). On digits,
    SimCLR for 20 epochs with seeds 0 and 1 gave probe 0.967 / 0.972 and k-means 0.725 / 0.694
    batched, against 0.972 / 0.967 and 0.722 / 0.686 with torchvision's per-image augmentation in
    workers, in 155 s instead of 204-254 s."""
    possible = isinstance(dataset, ArrayImageDataset) and transform_name in GPU_TRANSFORMS
    if cfg.data.gpu_resident == "on" and not possible:
        raise ConfigError("data.gpu_resident=on needs an in-memory dataset (digits, fashion-mnist, cifar, stl10) "
                          f"and a transform among {', '.join(GPU_TRANSFORMS)}; got {cfg.data.dataset!r} with "
                          f"{transform_name!r}")
    if cfg.data.gpu_resident == "off" or not possible:
        return False
    return cfg.data.gpu_resident == "on" or int(np.prod(dataset.images.shape)) <= GPU_RESIDENT_MAX_BYTES


def to_device(batch, device: torch.device, channels_last: bool):
    images, labels = batch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    move = lambda t: t.to(device, non_blocking=True, memory_format=fmt)  # noqa: E731
    images = [move(v) for v in images] if isinstance(images, (list, tuple)) else move(images)
    return images, labels.to(device, non_blocking=True)


def train(cfg: Config, resume: bool = False, progress: bool | None = None) -> TrainResult:
    """Pretrain ``cfg.encoder`` with ``cfg.method`` on ``cfg.data``; writes everything under ``cfg.out_dir``.

    Writes ``config.yaml``, ``metrics.jsonl``, ``checkpoints/last.pt`` (every
    ``trainer.checkpoint_every`` steps and at the end) and ``encoder.pt``. With ``resume`` it
    continues from ``checkpoints/last.pt`` exactly where that run stopped.
    """
    out = Path(cfg.out_dir)
    dist_info, device = init_distributed(resolve_device(cfg.trainer.device))
    rank, world, main = dist_info.rank, dist_info.world_size, dist_info.is_main
    state = None
    if resume:
        last = out / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"--resume: no checkpoint at {last}; start without --resume")
        state = load_checkpoint(last)
        check_resume_config(cfg, state["config"], last)
        for stale in last.parent.glob(".*.tmp") if main else ():  # half-written by a killed run; now removed
            stale.unlink(missing_ok=True)
    # Model-side randomness (noise, masks) differs per process; DDP copies rank 0's initial weights.
    seed_everything(cfg.seed if rank == 0 else mix_seed(cfg.seed, rank), cfg.trainer.deterministic, device)

    dataset, size, num_classes, transform_name = build_train_dataset(cfg)
    labels_all = np.asarray(dataset.labels)
    has_labels = bool((labels_all >= 0).any())
    all_labelled = bool((labels_all >= 0).all())
    if cfg.method.name == "supervised" and (labels_all.min() < 0 or labels_all.max() >= num_classes):
        raise ConfigError(f"method.name=supervised needs a label in [0, {num_classes}) for every image; "
                          f"{cfg.data.dataset}/{cfg.data.split} has labels from {labels_all.min()} to "
                          f"{labels_all.max()} (-1 = unlabeled: use a labelled split or a self-supervised method)")
    encoder = create_encoder(cfg.encoder.name, **cfg.encoder.options)
    method = create_method(cfg.method.name, encoder, **method_options(cfg, size, num_classes)).to(device)
    if cfg.trainer.channels_last:
        method = method.to(memory_format=torch.channels_last)
    if cfg.trainer.sync_batchnorm and (world > 1 or device.type == "cuda"):   # one process: the same as BatchNorm
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA: PyTorch's SyncBatchNorm refuses CPU tensors; "
                              "on CPUs use encoder.norm=group (or layer) for batch-independent normalisation")
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        log.info("trainer.sync_batchnorm: %d BatchNorm layers synchronise over %d process(es)",
                 sum(isinstance(m, nn.SyncBatchNorm) for m in method.modules()), world)
    use_bf16 = cfg.trainer.precision == "bf16" or (cfg.trainer.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    if cfg.trainer.memory_check:
        n_views = getattr(dataset.transform, "n_views", 1)
        need = check_step_fits(method, cfg.data.batch_size, size, n_views, device, autocast,
                               cfg.trainer.channels_last, "bf16" if use_bf16 else "fp32")
        if main:
            log.info("a step needs about %.2f GiB (data.batch_size=%d, %d view(s) of %d px)", need / 2**30,
                     cfg.data.batch_size, n_views, size)
    optimizer = build_optimizer(method, cfg.optim)
    probe = probe_opt = None
    if cfg.trainer.online_probe and has_labels:
        probe = online_probe_head(method.encoder.num_features, num_classes).to(device)
        probe_opt = AdamW(probe.parameters(), lr=ONLINE_PROBE_LR, weight_decay=0.0, fused=device.type == "cuda")
    eval_set = build_eval_dataset(cfg, size) if probe is not None and main else None
    if eval_set is not None:
        eval_images, eval_labels = eval_tensors(eval_set, device, cfg.data.num_workers)

    if use_gpu_resident(cfg, dataset, device, transform_name):
        loader = GPUResidentLoader(dataset.tensor(), torch.as_tensor(dataset.labels), cfg.data.batch_size, cfg.seed,
                                   transform_name, stats_for(cfg.data.dataset), size,
                                   n_views=2 if cfg.method.name == "simclr" else 1, device=device, rank=rank,
                                   world_size=world, min_scale=cfg.data.min_scale)
        sampler = loader
    else:
        loader, sampler = build_loader(dataset, cfg, device, cfg.seed, rank, world, transform_name, size)
    steps_per_epoch = sampler.batches_per_epoch   # global batches: every process steps together
    total = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch

    step, epoch, batch_in_epoch = 0, 0, 0
    if state is not None:
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if probe is not None and state.get("probe"):
            if "weight" in state["probe"]:   # written before the head normalised its input: start the probe afresh
                log.warning("the checkpoint's online probe is a bare linear layer (an older layout); the probe "
                            "restarts (the encoder, the method and their optimiser resume exactly)")
            else:
                probe.load_state_dict(state["probe"])
                probe_opt.load_state_dict(state["probe_optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        set_rng_state(per_rank[rank] if len(per_rank) == world else state["rng"])
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    metrics = MetricsLog(out, resume_step=step if state is not None else None) if main else None
    model = method
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=cfg.method.name == "cpc")  # short grids skip predictors
    model = torch.compile(model) if cfg.trainer.compile else model
    if main and device.type == "cpu" and cfg.trainer.precision == "auto" and native_bf16():
        # auto stays fp32 on CPUs (results match earlier CPU runs); the faster choice is the user's
        log.info("this CPU runs bf16 in hardware: trainer.precision=bf16 trainer.channels_last=true trains about 2x "
                 "faster than fp32 on such CPUs (eval/RESULTS.md, 'Training on the CPU')")

    def checkpoint_state() -> dict:
        return {"model": method.state_dict(), "optimizer": optimizer.state_dict(),
                "probe": probe.state_dict() if probe is not None else {},
                "probe_optimizer": probe_opt.state_dict() if probe is not None else {},
                "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "config": config_to_dict(cfg),
                "encoder_spec": {"name": method.encoder.encoder_name, "kwargs": dict(method.encoder.encoder_kwargs)}}

    def write_checkpoint() -> Path:
        """Every process takes part (its RNG state is gathered); rank 0 writes; all wait for it."""
        ranks_rng = gather_objects(rng_state(), dist_info)
        path = out / "checkpoints" / "last.pt"
        if main:
            path = save_checkpoint(out, {**checkpoint_state(), "rng_per_rank": ranks_rng}, step,
                                   cfg.trainer.keep_checkpoints)
        barrier(dist_info)
        return path

    interactive = (progress if progress is not None else sys.stderr.isatty()) and main
    bar = tqdm(total=total, initial=step, desc=f"{cfg.method.name}/{cfg.encoder.name}", unit="step",
               disable=not interactive, dynamic_ncols=True)
    print_every = max(1, total // 20)
    start_time, window_time, window_images, window_losses = time.time(), time.time(), 0, []
    probe_correct = probe_seen = 0
    last_loss, probe_acc = float("nan"), None
    method.train()

    def check_finite(values: list[float], step: int, epoch: int) -> None:
        """``values``: the losses of the steps up to ``step``, averaged over processes (every process
        sees, and stops on, the same values)."""
        for i, value in enumerate(values):
            if not math.isfinite(value):
                bad = step - len(values) + i + 1
                raise NonFiniteLossError(
                    f"loss became {value} at step {bad} (epoch {epoch}); stopped. The last good checkpoint is "
                    f"kept in {out / 'checkpoints'}. Try a lower optim.lr (now {cfg.optim.lr}), "
                    f"optim.grad_clip, or trainer.precision=fp32")

    pending = None   # the last logging step's record, its values still on their way to the host

    def write_pending() -> None:
        """Complete the last logging step's record with its losses and method values, check them, write it."""
        nonlocal pending, last_loss
        if pending is None:
            return
        copy, record, n_losses, keys = pending
        pending = None
        values = copy.tolist()
        losses = values[:n_losses]
        check_finite(losses, record["step"], record["epoch"])
        last_loss = losses[-1]
        record.update(loss=sum(losses) / n_losses, **dict(zip(keys, values[n_losses:])))
        if main:
            metrics.write(record)
        bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.3g}", refresh=False)

    try:
        while step < total:
            sampler.set_epoch(epoch, batch_in_epoch)
            for batch in loader:
                lr = lr_at(step, cfg.optim.lr, total, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if probe_opt is not None:
                    probe_opt.param_groups[0]["lr"] = ONLINE_PROBE_LR * lr / cfg.optim.lr
                images, labels = to_device(batch, device, cfg.trainer.channels_last)
                with autocast():
                    loss, logs = model((images, labels))
                probe_loss = None
                if probe is not None and method.probe_features is not None:
                    # No host syncs here: counts stay on the device; unlabeled samples (-1) are masked.
                    # Few ops: a step of a small encoder on a GPU is bound by kernel launches.
                    logits = probe(method.probe_features.float())
                    if all_labelled:
                        probe_loss = F.cross_entropy(logits, labels)
                        probe_seen = probe_seen + len(labels)
                    else:
                        known = labels >= 0
                        probe_loss = (F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * known).sum() \
                            / known.sum().clamp_min(1)
                        probe_seen = probe_seen + known.sum()
                    probe_correct = probe_correct + (logits.argmax(1) == labels).sum()   # -1 never matches
                    probe_opt.zero_grad(set_to_none=True)
                optimizer.zero_grad(set_to_none=True)
                # one backward pass for both: the probe's features are detached, so its loss reaches only the probe
                (loss if probe_loss is None else loss + probe_loss).backward()
                if cfg.optim.grad_clip:
                    nn.utils.clip_grad_norm_(method.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                if probe_loss is not None:
                    probe_opt.step()
                step += 1
                batch_in_epoch += 1
                window_losses.append(loss.detach())
                window_images += cfg.data.batch_size * world
                epoch_done = batch_in_epoch == steps_per_epoch
                if step % cfg.trainer.log_every == 0 or step == total or step == 1 or epoch_done:
                    write_pending()
                    now = time.time()
                    keys = [k for k in logs if k != "loss"]
                    values = torch.stack([v.float() for v in window_losses]
                                         + [torch.as_tensor(logs[k], device=device).float().reshape(()) for k in keys])
                    record = {"step": step, "epoch": epoch, "lr": lr,
                              "images_per_s": window_images / max(now - window_time, 1e-9),
                              "elapsed": now - start_time}
                    if epoch_done:  # score the online probe, roll over
                        if int(probe_seen):
                            record["online_probe_train_acc"] = int(probe_correct) / int(probe_seen)
                            probe_acc = record["online_probe_train_acc"]
                        if eval_set is not None:
                            probe_acc = probe_accuracy(method.encoder, probe, eval_images, eval_labels,
                                                       cfg.data.batch_size, autocast)
                            record["online_probe_acc"] = probe_acc
                        probe_correct = probe_seen = 0
                        epoch, batch_in_epoch = epoch + 1, 0
                    pending = (HostCopy(mean_over_ranks(values, dist_info)), record, len(window_losses), keys)
                    window_time, window_images, window_losses = now, 0, []
                bar.update(1)
                if main and not interactive and (step % print_every == 0 or step == total):
                    if pending is not None and pending[0].ready():
                        write_pending()   # already on the host (always on CPU): print the newest loss
                    shown = "(on its way)" if math.isnan(last_loss) else f"{last_loss:.4f}"
                    print(f"step {step}/{total} epoch {epoch} loss {shown} lr {lr:.4g} "
                          f"elapsed {time.time() - start_time:.0f}s", flush=True)
                if step % cfg.trainer.checkpoint_every == 0 and step < total:
                    write_pending()   # never checkpoint weights a NaN has reached
                    if window_losses:
                        check_finite(mean_over_ranks(torch.stack(window_losses).float(), dist_info).tolist(), step,
                                     epoch)
                    write_checkpoint()
                if step >= total:
                    break
        write_pending()
        checkpoint = write_checkpoint()
        if main:
            atomic_save(encoder_payload(method.encoder), out / "encoder.pt")
        barrier(dist_info)
    except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is one; a CPU allocation failure another
        if not (isinstance(exc, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(exc)):
            raise
        raise DeviceMemoryError(out_of_memory_message(cfg, device, step, out)) from None
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    if not math.isfinite(last_loss):
        last_loss = float("nan")
    return TrainResult(out, checkpoint, out / "encoder.pt", step, last_loss, probe_acc)
