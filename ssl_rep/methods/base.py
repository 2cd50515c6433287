"""What every pretext method shares: it owns ``encoder`` and maps a batch to ``(loss, logs)``."""
from __future__ import annotations

import torch
from torch import nn

from ..encoders import Encoder


class Method(nn.Module):
    """Base class. ``forward(batch) -> (loss, logs)``: ``loss`` a scalar tensor to backpropagate,
    ``logs`` a dict of detached 0-d tensors (the trainer reads them only at logging steps, so a
    step never waits on the device for them; ``float(logs["loss"])`` gives the number). ``batch`` is what a DataLoader over an ssl_rep dataset yields:
    ``(images, labels)`` with ``images`` a tensor ``(B, 3, H, W)`` or a list of views.

    After each forward, ``probe_features`` holds the batch's pooled encoder features ``(B, D)``
    (first view), detached: the trainer's online linear probe reads them at no extra cost."""

    probe_features: torch.Tensor | None = None

    name = ""

    def __init__(self, encoder: Encoder):
        super().__init__()
        if not hasattr(encoder, "feature_map") or not hasattr(encoder, "num_features"):
            raise TypeError(f"{type(self).__name__} needs an ssl_rep encoder (forward, feature_map, "
                            f"num_features), got {type(encoder).__name__}; use ssl_rep.create_encoder")
        self.encoder = encoder

    @staticmethod
    def images_of(batch) -> torch.Tensor | list[torch.Tensor]:
        return batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch


def replace_batchnorm(module: nn.Module, norm: str) -> int:
    """Swap every BatchNorm2d for a batch-free norm (``layer``, ``group`` or ``none``), in place.

    Returns how many were replaced. Used by CPC so patches of one image cannot see each other
    through batch statistics; the encoder's ``encoder_kwargs`` are updated so a checkpoint
    rebuilds it with the same norm."""
    from ..encoders import make_norm

    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, make_norm(norm, child.num_features))
            count += 1
        else:
            count += replace_batchnorm(child, norm)
    if count and hasattr(module, "encoder_kwargs"):
        module.encoder_kwargs = {**module.encoder_kwargs, "norm": norm}
    return count
