"""Encoder registry: ``create_encoder(name, **kw)`` and ``list_encoders()``, like timm's."""
from __future__ import annotations

from functools import partial
from typing import Callable

from .base import NORMS, CodeEncoder, Encoder, GridPooledEncoder, make_norm
from .cifar_resnet import CifarResNet
from .mlp import MLPEncoder, fully_connected
from .patch_grid import PatchGridEncoder
from .timm_encoder import TimmEncoder
from .torchvision_resnet import TorchvisionResNet

_REGISTRY: dict[str, Callable[..., Encoder]] = {
    **{f"resnet{d}": partial(CifarResNet, d) for d in (20, 32, 44, 56, 110)},
    **{a: partial(TorchvisionResNet, a) for a in ("resnet18", "resnet34", "resnet50")},
    "mlp": MLPEncoder,
}

WRAPPERS = {"patch_grid": PatchGridEncoder, "grid_pooled": GridPooledEncoder, "code_layer": CodeEncoder}


def list_encoders() -> list[str]:
    """Registered names, CIFAR ResNets first, then torchvision's, the fully connected ``mlp``, then the timm
    pattern."""
    return list(_REGISTRY) + ["timm:<name>"]


def create_encoder(name: str, **kwargs) -> Encoder:
    """Build an encoder by name. CIFAR ResNets take ``shortcut`` ("A"/"B"), ``norm``, ``in_chans``, ``width``
    (stage 1's channels) and ``out_features`` (a 1x1 conv + norm + ReLU widening the last map);
    torchvision ResNets take ``stem`` ("imagenet"/"cifar"), ``norm``, ``in_chans``;
    ``mlp`` (DEC's and N2D's fully connected encoder) takes ``image_size`` (required), ``hidden``, ``gray``;
    ``timm:<model>`` passes keyword arguments to ``timm.create_model``.
    Two wrappers (not listed) take ``encoder`` and ``encoder_kwargs`` for the encoder they wrap:
    ``patch_grid`` (CPC's evaluation encoder; ``patch_size``, ``stride``) applies it to each patch of a grid,
    ``grid_pooled`` (the autoencoder's spatial code; ``grid``) pools its last map to ``grid x grid`` cells,
    ``code_layer`` (the autoencoder's ``code_dim`` code; ``code_dim``) puts a linear layer on its output."""
    if name in WRAPPERS:
        kwargs = dict(kwargs)
        inner = create_encoder(kwargs.pop("encoder"), **kwargs.pop("encoder_kwargs", {}))
        return WRAPPERS[name](inner, **kwargs)
    if name.startswith("timm:"):
        encoder = TimmEncoder(name[len("timm:"):], **kwargs)
    elif name in _REGISTRY:
        try:
            encoder = _REGISTRY[name](**kwargs)
        except TypeError as exc:
            raise TypeError(f"create_encoder({name!r}): {exc}") from exc
    else:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(list_encoders())}")
    encoder.encoder_name, encoder.encoder_kwargs = name, dict(kwargs)
    return encoder


from .io import CheckpointError, load_encoder  # noqa: E402  (io needs create_encoder defined)

__all__ = ["NORMS", "CheckpointError", "CodeEncoder", "Encoder", "GridPooledEncoder", "MLPEncoder", "PatchGridEncoder",
           "load_encoder", "create_encoder", "fully_connected", "list_encoders", "make_norm"]
