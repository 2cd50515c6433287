"""Encoders out of ssl_rep: weights other libraries load as their own, or safetensors with a description.

``export_encoder(source, path, format)``:

- ``torchvision``: a ResNet-18/34/50 with the ImageNet stem (BatchNorm, 3 channels) as the ``state_dict`` of
  ``torchvision.models.resnet18()`` etc. without ``fc``: load it with ``strict=True`` after
  ``model.fc = torch.nn.Identity()``; ``model(x)`` is then ssl_rep's ``encoder(x)``.
- ``timm``: a ``timm:<name>`` encoder as the ``state_dict`` of ``timm.create_model(name, num_classes=0)``.
- ``safetensors`` (any encoder): the weights as safetensors, and beside them ``<path>.json`` with what rebuilds
  the encoder (name, arguments, feature size) and what it expects to read (dataset, normalisation mean/std, image
  size), the method and training config when the source was a run, and the ssl_rep version.
  ``ssl_rep.load_encoder`` reads it back; ``encoder.preprocess`` then holds the input description.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import __version__
from .encoders.io import EXPORT_FORMAT, safe_load

FORMATS = ("torchvision", "timm", "safetensors")


def _source(source) -> tuple[torch.nn.Module, dict | None]:
    """The encoder and, when ``source`` is a run's file, that run's config (a training checkpoint holds it;
    ``OUT/encoder.pt`` has ``OUT/config.yaml`` beside it)."""
    from .encoders import load_encoder

    if isinstance(source, torch.nn.Module):
        return source, None
    path = Path(source)
    encoder = load_encoder(path)
    if path.suffix == ".safetensors":   # re-exporting an export: its JSON holds the config
        return encoder, json.loads(path.with_suffix(".json").read_text()).get("config")
    config = safe_load(path).get("config")
    if config is None and (path.parent / "config.yaml").is_file():
        import yaml
        config = yaml.safe_load((path.parent / "config.yaml").read_text())
    return encoder, config


def describe_input(config: dict | None) -> dict | None:
    """Dataset, normalisation and image size a run's encoder was trained on (None without a config)."""
    if not config:
        return None
    from .data.transforms import preprocessing

    data = config.get("data", {})
    return preprocessing(data.get("dataset", "imagenet"), data.get("image_size"))


def _torchvision_state(encoder) -> dict:
    name, kwargs = encoder.encoder_name, encoder.encoder_kwargs
    works = "torchvision works for resnet18/34/50 with stem=imagenet, norm=batch, in_chans=3"
    if name not in ("resnet18", "resnet34", "resnet50"):
        raise ValueError(f"encoder {name!r} has no torchvision twin ({works}); use format='safetensors'")
    twin = {"stem": "imagenet", "norm": "batch", "in_chans": 3}   # zero_init_residual only changes the init
    odd = {k: v for k, v in kwargs.items() if k in twin and v != twin[k]}
    if odd:
        raise ValueError(f"encoder {name!r} with {odd} has no torchvision twin ({works}); use format='safetensors'")
    return {k[len("body."):]: v for k, v in encoder.state_dict().items()}


def _timm_state(encoder) -> dict:
    if not encoder.encoder_name.startswith("timm:"):
        raise ValueError(f"encoder {encoder.encoder_name!r} is not a timm model (timm works for timm:<name> "
                         f"encoders); use format='safetensors'" + (" or 'torchvision'" if encoder.encoder_name in
                                                                   ("resnet18", "resnet34", "resnet50") else ""))
    return {k[len("model."):]: v for k, v in encoder.state_dict().items()}


def export_encoder(source, path, format: str = "safetensors") -> Path:
    """Write the encoder of ``source`` (a run's ``encoder.pt`` or training checkpoint, or an encoder module) to
    ``path`` in ``format`` (see the module's docstring). Returns ``path``; ``safetensors`` also writes
    ``path.with_suffix('.json')``."""
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    encoder, config = _source(source)
    if not getattr(encoder, "encoder_name", ""):
        raise ValueError(f"export_encoder needs an ssl_rep encoder (create_encoder or load_encoder), got "
                         f"{type(encoder).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchvision":
        torch.save({k: v.detach().cpu().contiguous() for k, v in _torchvision_state(encoder).items()}, path)
        return path
    if format == "timm":
        torch.save({k: v.detach().cpu().contiguous() for k, v in _timm_state(encoder).items()}, path)
        return path
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(weights, str(path))
    meta = {"format": EXPORT_FORMAT, "ssl_rep_version": __version__, "encoder": encoder.encoder_name,
            "kwargs": dict(encoder.encoder_kwargs), "num_features": encoder.num_features,
            "input": getattr(encoder, "preprocess", None) or describe_input(config),   # the size it trained at
            "method": (config or {}).get("method", {}).get("name"),
            "config": config}
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return path
