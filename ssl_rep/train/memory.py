"""Will a training step fit? An estimate of its peak memory, measured before the first step.

The estimate is what a step keeps alive at its peak: parameters, their gradients and two optimiser
moments (4 copies of the weights), plus the activations autograd saves for the backward pass.
Activations are counted exactly, by size, with ``saved_tensors_hooks`` during a forward pass of a
copy of the method at batch 2 and at batch 4 (in the run's precision and memory format), and
extrapolated linearly to the batch size. A margin covers the backward pass's temporaries. The
real model, its BatchNorm statistics and the random number generators are untouched.
"""
from __future__ import annotations

import copy
import os
from contextlib import nullcontext

import torch
from torch import nn

MARGIN = 1.25          # backward temporaries, allocator slack
HOST_FRACTION = 0.9    # of the host memory available now: leave some for DataLoader workers and the OS


class StepMemoryError(RuntimeError):
    """A step would need more memory than the device has; raised before the first step, nothing written."""


def available_bytes(device: torch.device) -> int:
    """Memory a step can use: free GPU memory, or the host's available memory (MemAvailable) on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _saved_activation_bytes(method: nn.Module, batch, autocast) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast():
        loss, _ = method(batch)
    del loss
    return sum(seen.values())


def px_text(size) -> str:
    return str(size) if isinstance(size, int) else " and ".join(str(s) for s in sorted(set(size), reverse=True))


def _example_batch(batch_size: int, size, n_views: int, device: torch.device, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sizes = [size] * n_views if isinstance(size, int) else list(size)
    views = [torch.randn(batch_size, 3, s, s, device=device).contiguous(memory_format=fmt) for s in sizes]
    return (views if n_views > 1 else views[0]), torch.zeros(batch_size, dtype=torch.long, device=device)


def estimate_step_bytes(method: nn.Module, batch_size: int, size: int, n_views: int, device: torch.device,
                        autocast=nullcontext, channels_last: bool = False) -> int:
    """Estimated peak bytes of one training step of ``method`` at ``batch_size`` images of ``size`` px (or a list
    of each view's size, for multi-crop)."""
    probe = copy.deepcopy(method).train()
    weights = sum(p.numel() * p.element_size() for p in probe.parameters())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        small, large = (_saved_activation_bytes(probe, _example_batch(b, size, n_views, device, channels_last),
                                                autocast) for b in (2, 4))
    per_image = max(0.0, (large - small) / 2)
    activations = max(small, small + per_image * (batch_size - 2))
    return int(MARGIN * (4 * weights + activations))


def check_step_fits(method: nn.Module, batch_size: int, size: int, n_views: int, device: torch.device,
                    autocast=nullcontext, channels_last: bool = False, precision: str = "fp32") -> int:
    """Raise :class:`StepMemoryError` when the estimated step does not fit; return the estimate."""
    need = estimate_step_bytes(method, batch_size, size, n_views, device, autocast, channels_last)
    have = available_bytes(device)
    budget = have if device.type == "cuda" else int(have * HOST_FRACTION)
    if need > budget:
        fits = max(1, int(batch_size * budget / need))
        where = "free on the GPU" if device.type == "cuda" else "of host memory available"
        raise StepMemoryError(
            f"a training step needs about {need / 2**30:.1f} GiB (data.batch_size={batch_size}, {n_views} view(s) "
            f"of {px_text(size)} px, {precision}), but only {budget / 2**30:.1f} GiB {where}; it would be killed. "
            f"Try data.batch_size={fits} or less, a smaller data.image_size"
            + ("" if precision == "bf16" else ", or trainer.precision=bf16")
            + " (or trainer.memory_check=false to start anyway)")
    return need
