"""Pretext methods: ``create_method(name, encoder, **kw)`` -> a Method with ``(loss, logs) = method(batch)``."""
from __future__ import annotations

from .autoencoder import Autoencoder
from .base import Method, MethodOutput, replace_batchnorm
from .cpc import CPC
from .losses import info_nce, nt_xent
from .simclr import SimCLR
from .supervised import Supervised

METHODS = {cls.name: cls for cls in (Autoencoder, CPC, SimCLR, Supervised)}


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


__all__ = ["CPC", "METHODS", "Autoencoder", "Method", "MethodOutput", "SimCLR", "Supervised", "create_method",
           "info_nce", "method_class", "nt_xent", "register_method", "replace_batchnorm"]
