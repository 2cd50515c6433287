"""Pretext methods: ``create_method(name, encoder, **kw)`` -> a Method with ``(loss, logs) = method(batch)``."""
from __future__ import annotations

from .autoencoder import Autoencoder
from .barlow_twins import BarlowTwins
from .base import Method, MethodOutput, MultiCropSpec, replace_batchnorm
from .byol import BYOL
from .cpc import CPC
from .dino import DINO
from .losses import barlow_twins_loss, byol_loss, dino_loss, info_nce, moco_loss, nt_xent, vicreg_loss
from .moco import MoCo
from .simclr import SimCLR
from .simsiam import SimSiam
from .supervised import Supervised
from .vicreg import VICReg

METHODS = {cls.name: cls for cls in (Autoencoder, CPC, SimCLR, Supervised, BYOL, MoCo, SimSiam, BarlowTwins,
                                     VICReg, DINO)}


def register_method(cls: type[Method]) -> type[Method]:
    """Make a :class:`Method` subclass available by its ``name`` to :func:`create_method`, recipes and
    ``ssl-pretrain`` (``method.name``); usable as a class decorator. Returns the class."""
    if not (isinstance(cls, type) and issubclass(cls, Method)) or not cls.name:
        raise TypeError(f"register_method needs a Method subclass with a name, got {cls!r}")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """The registered method class called ``name``; an unknown name lists the valid ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]


def create_method(name: str, encoder, **kwargs) -> Method:
    """Wrap ``encoder`` in the named pretext task; keyword arguments go to its constructor."""
    cls = method_class(name)
    try:
        return cls(encoder, **kwargs)
    except TypeError as exc:
        raise TypeError(f"create_method({name!r}): {exc}") from exc


__all__ = ["BYOL", "CPC", "DINO", "METHODS", "Autoencoder", "BarlowTwins", "Method", "MethodOutput", "MoCo", "MultiCropSpec", "SimCLR",
           "SimSiam", "Supervised", "VICReg", "barlow_twins_loss", "byol_loss", "create_method", "dino_loss",
           "info_nce", "method_class", "moco_loss", "nt_xent", "register_method", "replace_batchnorm", "vicreg_loss"]
