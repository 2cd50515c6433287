"""Pretext methods: ``create_method(name, encoder, **kw)`` -> a Method with ``(loss, logs) = method(batch)``."""
from __future__ import annotations

from .autoencoder import Autoencoder
from .base import Method, replace_batchnorm
from .cpc import CPC
from .losses import info_nce, nt_xent
from .simclr import SimCLR
from .supervised import Supervised

METHODS = {"autoencoder": Autoencoder, "cpc": CPC, "simclr": SimCLR, "supervised": Supervised}


def create_method(name: str, encoder, **kwargs) -> Method:
    """Wrap ``encoder`` in the named pretext task; keyword arguments go to its constructor."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    try:
        return METHODS[name](encoder, **kwargs)
    except TypeError as exc:
        raise TypeError(f"create_method({name!r}): {exc}") from exc


__all__ = ["CPC", "METHODS", "Autoencoder", "Method", "SimCLR", "Supervised", "create_method", "info_nce",
           "nt_xent", "replace_batchnorm"]
