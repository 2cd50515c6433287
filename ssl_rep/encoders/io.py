"""Reading encoders back from files: ``load_encoder`` for ``encoder.pt`` and training checkpoints.

Files are read with ``torch.load(..., weights_only=True)``: a file carrying a pickled code payload
is refused, never executed.
"""
from __future__ import annotations

from pathlib import Path

import torch

CHECKPOINT_FORMAT = "ssl_rep.checkpoint/1"
ENCODER_FORMAT = "ssl_rep.encoder/1"
EXPORT_FORMAT = "ssl_rep.export/1"   # the JSON beside an exported .safetensors


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or read; the message names the file."""


def safe_load(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True`` (no code runs from the file); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle payloads, truncation, foreign formats all land here
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a loadable ssl_rep checkpoint ({type(exc).__name__}: {first_line})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def encoder_payload(encoder, preprocess: dict | None = None) -> dict:
    """What ``encoder.pt`` holds: the name and kwargs to rebuild the module, its weights, and the input it reads
    (``preprocess``: dataset, mean/std, image size; :func:`ssl_rep.data.transforms.preprocessing`)."""
    return {"format": ENCODER_FORMAT, "name": encoder.encoder_name, "kwargs": dict(encoder.encoder_kwargs),
            "num_features": encoder.num_features, "preprocess": preprocess,
            "state_dict": {k: v.detach().cpu() for k, v in encoder.state_dict().items()}}


def load_exported(path) -> torch.nn.Module:
    """The encoder (eval mode) of a ``safetensors`` export (:func:`ssl_rep.export.export_encoder`), its
    ``preprocess`` set from the JSON beside it."""
    import json

    from safetensors.torch import load_file

    from . import create_encoder

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no {meta_path.name} beside it (export_encoder writes the two together)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not JSON ({exc})") from exc
    if meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    try:
        encoder = create_encoder(meta["encoder"], **meta["kwargs"])
        encoder.load_state_dict(load_file(str(path)), strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild {meta.get('encoder')!r} from it: {str(exc)[:300]}") from exc
    encoder.preprocess = meta.get("input")
    return encoder.eval()


def encoder_spec_and_weights(obj: dict, path: Path) -> tuple[str, dict, dict]:
    fmt = obj.get("format")
    if fmt == ENCODER_FORMAT:
        return obj["name"], obj["kwargs"], obj["state_dict"]
    if fmt == CHECKPOINT_FORMAT:
        spec = obj.get("encoder_spec") or {}
        prefix = "encoder."
        weights = {k[len(prefix):]: v for k, v in obj["model"].items() if k.startswith(prefix)}
        if not spec or not weights:
            raise CheckpointError(f"{path}: training checkpoint without an encoder spec; use OUT/encoder.pt")
        return spec["name"], spec["kwargs"], weights
    if fmt is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):   # weights alone
        raise CheckpointError(f"{path}: bare weights ({len(obj)} tensors, e.g. {next(iter(obj))!r}), not an ssl_rep "
                              f"encoder or checkpoint: load_encoder reads what ssl-pretrain writes (encoder.pt, "
                              f"checkpoints/*.pt) and ssl-export's safetensors; load weights like these into your "
                              f"own model with load_state_dict")
    raise CheckpointError(f"{path}: not an ssl_rep encoder or checkpoint (format {fmt!r}; expected "
                          f"{ENCODER_FORMAT!r} or {CHECKPOINT_FORMAT!r})")


def load_encoder(path: str | Path, map_location="cpu", projection: bool = False) -> torch.nn.Module:
    """Rebuild the encoder saved in ``path`` (``OUT/encoder.pt``, ``OUT/checkpoints/last.pt``, or a
    ``.safetensors`` file from :func:`ssl_rep.export.export_encoder`). ``encoder.preprocess`` says what input it
    reads (dataset, normalisation mean/std, image size), None for files saved before that was recorded.

    Returns the encoder in eval mode: ``enc(x) -> (N, enc.num_features)``. A file from another
    encoder, a truncated or foreign file gives a :class:`CheckpointError` naming the file (and the
    missing/unexpected weights when the architecture differs).

    ``projection=True``: the encoder followed by the projection head it was trained with (a SimCLR
    training checkpoint), as a :class:`~ssl_rep.encoders.heads.ProjectedEncoder`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":   # ssl_rep.export_encoder(..., format="safetensors") and its JSON
        if projection:
            raise CheckpointError(f"{path}: an exported encoder has no projection head; use the run's checkpoint")
        return load_exported(path)
    obj = safe_load(path, map_location)
    encoder = encoder_from(obj, path)
    encoder.preprocess = obj.get("preprocess")   # None for files saved before it was recorded
    if projection:
        from .heads import ProjectedEncoder
        return ProjectedEncoder(encoder, projection_head(obj, path)).eval()
    return encoder


def encoder_from(obj: dict, path: Path) -> torch.nn.Module:
    """The encoder (eval mode) rebuilt from a loaded ``encoder.pt`` or training checkpoint ``obj``; errors name
    ``path``."""
    from . import create_encoder

    name, kwargs, weights = encoder_spec_and_weights(obj, path)
    try:
        encoder = create_encoder(name, **kwargs)
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot rebuild encoder {name!r} with {kwargs}: {exc}") from exc
    result = encoder.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"{path}: weights do not fit encoder {name!r}: missing {result.missing_keys[:5]}"
                              f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected "
                              f"{result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}")
    return encoder.eval()


def projection_head(obj: dict, path: Path) -> torch.nn.Module:
    """The projection MLP (``head.*`` weights) of a training checkpoint; errors name the file."""
    from .heads import head_from_weights

    if obj.get("format") == ENCODER_FORMAT:
        raise CheckpointError(f"{path} holds the encoder alone; the projection head is in the training checkpoint "
                              f"({path.parent / 'checkpoints' / 'last.pt'})")
    weights = {k[len("head."):]: v for k, v in obj["model"].items() if k.startswith("head.")}
    method = ((obj.get("config") or {}).get("method") or {}).get("name", "?")
    if not weights:
        raise CheckpointError(f"{path}: no projection head in this checkpoint (method {method!r}); "
                              f"projection features need a SimCLR checkpoint")
    try:
        return head_from_weights(weights)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the head of method {method!r} is not a projection MLP "
                              f"(Linear -> [BatchNorm1d] -> ReLU -> Linear): {str(exc).splitlines()[0]}") from exc
