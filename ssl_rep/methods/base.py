"""What every pretext method shares: it owns ``encoder`` and maps a batch to ``(loss, logs)``."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..encoders import Encoder


class MultiCropSpec(NamedTuple):
    """The multi-crop a method asks for (:meth:`Method.multi_crop`): ``local`` small views whose side is
    ``local_size`` times the image's, cropped from ``local_scale`` of its area, beside the global views cropped from
    ``global_scale`` (DINO's defaults: 96 of 224 px, areas 0.05-0.4 and 0.4-1)."""

    local: int
    local_size: float = 96 / 224
    local_scale: tuple[float, float] = (0.05, 0.4)
    global_scale: tuple[float, float] = (0.4, 1.0)


class MethodOutput(tuple):
    """What a method's ``forward`` returns: unpacks as ``loss, logs = method(batch)``, and carries
    ``features``, the batch's pooled encoder features ``(B, D)`` (first view, detached) that the
    trainer's online probe reads at no extra cost (``None`` when a method has none)."""

    def __new__(cls, loss: torch.Tensor, logs: dict, features: torch.Tensor | None = None):
        out = super().__new__(cls, (loss, logs))
        out.features = features
        return out

    @property
    def loss(self) -> torch.Tensor:
        return self[0]

    @property
    def logs(self) -> dict:
        return self[1]


class Method(nn.Module):
    """Base class. ``forward(batch) -> MethodOutput(loss, logs, features)``: ``loss`` a scalar tensor to
    backpropagate, ``logs`` a dict of detached 0-d tensors (the trainer reads them only at logging
    steps, so a step never waits on the device for them; ``float(logs["loss"])`` gives the number),
    ``features`` what the online probe reads. ``batch`` is what a DataLoader over an ssl_rep dataset
    yields: ``(images, labels)`` with ``images`` a tensor ``(B, 3, H, W)`` or a list of views.

    A method declares what it needs as class attributes, and the trainer asks them (it never
    compares a method's name):

    - ``n_views``: augmented views per image in a batch (1: a tensor; 2 or more: a list of tensors).
    - ``transform``: the training augmentation it is meant for (a name in ``ssl_rep.data.TRANSFORMS``),
      or ``None`` for the trainer's choice by image size.
    - ``needs_labels``: every training image needs a label in ``[0, num_classes)``.
    - ``unused_parameters``: some parameters may get no gradient in a step (DDP must look for them).
    - ``multi_crop(options)``: extra small views (multi-crop), from the recipe's options; default none.

    Constructor arguments named ``image_size`` or ``num_classes`` are filled from the dataset when
    the recipe leaves them out. ``after_step(step, total_steps)`` runs after every optimiser step
    (momentum teachers, schedules); the default does nothing."""

    name = ""
    n_views: int = 1
    transform: str | None = None
    needs_labels: bool = False
    unused_parameters: bool = False

    def __init__(self, encoder: Encoder):
        super().__init__()
        if not hasattr(encoder, "feature_map") or not hasattr(encoder, "num_features"):
            raise TypeError(f"{type(self).__name__} needs an ssl_rep encoder (forward, feature_map, "
                            f"num_features), got {type(encoder).__name__}; use ssl_rep.create_encoder")
        self.encoder = encoder

    @classmethod
    def multi_crop(cls, options: dict):
        """The :class:`MultiCropSpec` the method asks for with these constructor ``options`` (the
        recipe's ``method`` keys), or None (the default) for ``n_views`` draws of one size. With a spec the trainer's
        batches hold the ``n_views`` global views first, then the spec's local ones."""
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        """Called by the trainer after optimiser step ``step`` (1-based) of ``total_steps``."""

    def views_of(self, batch) -> tuple[torch.Tensor, int]:
        """A multi-view batch's ``n_views`` views concatenated along the batch axis (one encoder pass, so
        BatchNorm sees every view), and the number of images ``B``: view ``v`` is rows ``v B .. (v + 1) B``."""
        views = self.images_of(batch)
        if not isinstance(views, (list, tuple)) or len(views) != self.n_views:
            raise ValueError(f"{type(self).__name__} needs {self.n_views} views per image: wrap the transform in "
                             f"ssl_rep.data.MultiView(transform, {self.n_views})")
        return torch.cat(list(views)), len(views[0])

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
