"""Run configuration: frozen dataclasses that YAML files and ``key=value`` overrides map onto.

Every key is checked before any work starts: an unknown key, a value of the wrong type or out of
range is a :class:`ConfigError` naming the key and listing the valid keys or choices. Encoder and
method options (``encoder.shortcut``, ``method.context``, ...) are checked against the signature of
the encoder or method they go to.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..data.transforms import MIN_SCALE, TRANSFORMS


def _recipe_dir() -> Path:
    """The recipes: the package ``ssl_rep.configs`` of an install (the checkout's configs/ when editable),
    else the checkout's configs/ beside this source tree."""
    try:
        from importlib.resources import files
        return Path(str(files("ssl_rep.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "configs"


CONFIG_DIR = _recipe_dir()


class ConfigError(ValueError):
    """A configuration mistake, explained for a person (key, value, valid choices)."""


def _field(default, choices: tuple = (), check: str | None = None):
    """A config field with its check beside it: ``choices`` (the valid values) or ``check`` (a name in
    ``RANGES``: ``positive``, ``non_negative``, ``fraction`` (0, 1], ``probability`` [0, 1])."""
    return field(default=default, metadata={"choices": tuple(choices), "check": check})


ON_OFF = ("auto", "on", "off")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"          # a dataset name (ssl_rep.data.DATASETS) or a folder path
    root: Optional[str] = None       # where the dataset's files are
    split: str = "train"             # split to pretrain on
    subset: Optional[int] = _field(None, check="positive")     # pretrain on a fixed random subset of this many images (seeded)
    eval_split: Optional[str] = "test"  # labelled split for the online probe's end-of-epoch score
    batch_size: int = _field(256, check="positive")            # per process (global batch = batch_size x world size)
    num_workers: int = _field(2, check="non_negative")
    transform: str = _field("auto", ("auto", *(t for t in TRANSFORMS if t != "ten_crop")))  # or the method's own
    image_size: Optional[int] = _field(None, check="positive")  # crop size; None = the dataset's own (a folder's median short side, <= 224)
    min_scale: float = _field(MIN_SCALE, check="fraction")  # smallest crop area, a fraction of the image (simclr, imagenet_rrc)
    # keep uint8 images on the training device (GPU or CPU), augment whole batches there (was data.gpu_resident)
    resident: str = _field("auto", ON_OFF)
    # image folders' JPEGs decoded by DataLoader workers (PIL), or in batches on the training device (nvjpeg on a
    # GPU), then augmented there
    decode_on: str = _field("workers", ("workers", "device"))


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "resnet20"
    options: dict = field(default_factory=dict)   # keyword arguments of create_encoder


@dataclass(frozen=True)
class MethodConfig:
    name: str = "simclr"
    options: dict = field(default_factory=dict)   # keyword arguments of the method's constructor


@dataclass(frozen=True)
class OptimConfig:
    name: str = _field("sgd", ("sgd", "adamw", "lars"))
    lr: float = _field(0.1, check="positive")                  # peak learning rate, used as given (no batch-size scaling)
    momentum: float = _field(0.9, check="non_negative")
    nesterov: bool = False
    betas: tuple = (0.9, 0.999)
    weight_decay: float = _field(5e-4, check="non_negative")       # decoupled; not applied to biases and norm parameters
    decay_norm_and_bias: bool = False
    grad_clip: Optional[float] = _field(None, check="non_negative")  # max global gradient norm


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = _field("cosine", ("cosine", "step", "constant"))
    warmup_steps: int = _field(0, check="non_negative")            # linear warmup from 0, in optimiser steps
    min_lr: float = _field(0.0, check="non_negative")              # cosine floor
    milestones: tuple = ()           # step decay: optimiser steps at which lr *= gamma
    gamma: float = _field(0.1, check="non_negative")


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = _field(10, check="positive")
    max_steps: Optional[int] = _field(None, check="positive")  # stop after this many optimiser steps (overrides epochs)
    checkpoint_every: int = _field(500, check="positive")      # optimiser steps between checkpoints (and one at the end)
    keep_checkpoints: int = _field(2, check="positive")        # step-numbered checkpoints kept beside last.pt
    log_every: int = _field(10, check="positive")              # optimiser steps between metrics.jsonl lines
    deterministic: bool = False
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = _field("auto", ("auto", "bf16", "fp32"))  # auto: bf16 on GPUs and on CPUs with bf16 in hardware
    channels_last: Optional[bool] = None   # None (auto): on for CPUs with AVX2 or AVX-512, where it measured faster
    compile: bool = False
    reuse_memory: bool = True        # on CPUs (glibc): keep freed memory for the next step, not unmap and fault it in
    online_probe: bool = True        # linear head on detached features when labels exist
    sync_batchnorm: bool = False     # under torchrun on GPUs: BatchNorm statistics over every process
    memory_check: bool = True        # estimate a step's peak memory first; refuse a run that cannot fit


@dataclass(frozen=True)
class Config:
    out_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


OPEN_SECTIONS = ("encoder", "method")  # extra keys become options, checked against a signature
RENAMED = {"data.gpu_resident": "data.resident"}   # old key -> new key; the old one still works, with a warning


def _rules(cls=None, prefix: str = "") -> dict[str, dict]:
    """``{dotted key: {"choices": ..., "check": ...}}`` from the fields' metadata."""
    rules = {}
    for f in dataclasses.fields(cls or Config):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            rules.update(_rules(f.default_factory, f"{prefix}{f.name}."))
        elif f.metadata:
            rules[prefix + f.name] = dict(f.metadata)
    return rules


RULES = _rules()

# Encoder and method options' ranges, by name: a name means one kind of number in every class that takes it
OPTION_CHECKS = {**dict.fromkeys(("width", "out_features", "in_chans", "hidden_dim", "out_dim", "pred_dim", "dim",
                                  "bottleneck_dim", "code_dim", "code_grid", "context_dim", "decoder_width",
                                  "image_size", "patch_size", "stride", "prediction_steps", "first_step", "queue_size",
                                  "num_classes", "temperature", "student_temp", "teacher_temp"), "positive"),
                 "warmup_teacher_temp": "positive",
                 **dict.fromkeys(("mask_ratio", "noise_ratio", "patch_flip", "patch_aug", "label_smoothing", "momentum",
                                  "momentum_final", "tau_base", "center_momentum"), "probability"),
                 **dict.fromkeys(("noise_std", "lambda_", "sim_weight", "var_weight", "cov_weight", "loss_scale",
                                  "l2_weight_decay", "local_crops", "patch_jitter", "read_crop", "read_stride",
                                  "teacher_temp_warmup"), "non_negative")}


def valid_keys(cls=Config, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += valid_keys(f.default_factory, f"{prefix}{f.name}.")
        elif f.name != "options":
            keys.append(prefix + f.name)
    return keys


_NUMBER = re.compile(r"[+-]?(\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)([eE][+-]?\d+)?")


def _number(value: Any) -> Any:
    """A number typed as text (``3e-4``, ``1E-5``, ``.5``, ``5.``, ``1_000``) as a float; other values as
    they are. YAML 1.1 reads an exponent without a dot (``3e-4``) as a string, in files and overrides."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value.strip().replace("_", ""))
    return value


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner[0])
    if typ in (int, float):
        value = _number(value)
    elif typ is tuple and isinstance(value, (list, tuple)):
        value = [_number(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value) and typ is not str:
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in value):
            return tuple(value)
    elif typ is dict:
        if isinstance(value, dict):
            return dict(value)
    name = getattr(typ, "__name__", str(typ))
    raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


RANGES = {"positive": (lambda v: v > 0, "> 0"), "non_negative": (lambda v: v >= 0, ">= 0"),
          "fraction": (lambda v: 0 < v <= 1, "in (0, 1]"), "probability": (lambda v: 0 <= v <= 1, "in [0, 1]")}


def _check_value(key: str, value: Any, rule: dict | None = None) -> None:
    rule = RULES.get(key, {}) if rule is None else rule
    if rule.get("choices") and value not in rule["choices"]:
        raise ConfigError(f"{key}: {value!r} is not a valid choice; valid: {', '.join(map(str, rule['choices']))}")
    if value is None or isinstance(value, (str, bool, tuple)):
        return
    check = RANGES.get(rule.get("check"))
    if check and not check[0](value):
        raise ConfigError(f"{key}: must be {check[1]}, got {value!r}")


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs, extra = {}, {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if full in RENAMED:
            new = RENAMED[full]
            warnings.warn(f"{full} is now called {new}; {full} will stop working in a later release", FutureWarning,
                          stacklevel=2)
            if new.rsplit(".", 1)[-1] in values:
                raise ConfigError(f"{full} and {new} are the same key (renamed); give only {new}")
            key, full = new.rsplit(".", 1)[-1], new
        if key not in names or key == "options":
            if prefix.rstrip(".") in OPEN_SECTIONS:
                extra[key] = value
                continue
            here = [k for k in valid_keys() if k.startswith(prefix)] if prefix else valid_keys()
            raise ConfigError(f"unknown key {full!r}; valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
                              f"{', '.join(here)}")
        typ = hints[key]
        if isinstance(value, bool) and set(RULES.get(full, {}).get("choices", ())) >= {"on", "off"}:
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, typ)
            _check_value(full, kwargs[key])
    if extra:
        kwargs["options"] = extra
    return cls(**kwargs)


def _signature_keys(section: str, name: str) -> dict[str, Any] | None:
    """Options accepted by the encoder or method called ``name`` with their defaults; None if any."""
    if section == "method":
        from ..methods import METHODS
        if name not in METHODS:
            raise ConfigError(f"method.name: unknown method {name!r}; valid: {', '.join(METHODS)}")
        fn = METHODS[name].__init__
        skip = {"self", "encoder"}
    else:
        from ..encoders import _REGISTRY, list_encoders
        if name.startswith("timm:"):
            return None
        if name not in _REGISTRY:
            raise ConfigError(f"encoder.name: unknown encoder {name!r}; valid: {', '.join(list_encoders())}")
        fn = getattr(_REGISTRY[name], "func", _REGISTRY[name]).__init__   # a partial (the ResNets) or a class
        skip = {"self", "depth", "arch"}
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if n not in skip}


def _check_options(config: Config) -> None:
    for section in OPEN_SECTIONS:
        sub = getattr(config, section)
        accepted = _signature_keys(section, sub.name)
        if accepted is None:
            continue
        for key, value in sub.options.items():
            if key not in accepted:
                raise ConfigError(f"unknown key '{section}.{key}' for {section} {sub.name!r}; valid options: "
                                  f"{', '.join(accepted)}")
            if isinstance(accepted[key], (bool, int, float, str)):
                sub.options[key] = _coerce(f"{section}.{key}", value, type(accepted[key]))
            _check_value(f"{section}.{key}", sub.options[key], _option_rule(section, sub.name, key))


def _option_rule(section: str, name: str, key: str) -> dict:
    """An encoder or method option's valid values, as the class declares them (``option_choices``), and its
    range (``OPTION_CHECKS``)."""
    if section == "method":
        from ..methods import METHODS
        cls = METHODS.get(name)
    else:
        from ..encoders import _REGISTRY
        cls = getattr(_REGISTRY.get(name), "func", _REGISTRY.get(name))
    return {"choices": tuple(getattr(cls, "option_choices", {}).get(key, ())), "check": OPTION_CHECKS.get(key)}


def config_from_dict(values: dict) -> Config:
    config = _build(Config, values, "")
    _check_options(config)
    return config


def config_to_dict(config: Config) -> dict:
    """Plain nested dict (tuples as lists), options merged into their section: YAML-ready."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            section = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(value).items()}
            options = section.pop("options", {})
            out[f.name] = {**section, **options}
        else:
            out[f.name] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.3"`` -> ``(["optim", "lr"], 0.3)``; values are read as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. optim.lr=0.3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key like optim.lr")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dict, set)) or (value is not None and not isinstance(value, (str, int, float, bool, list))):
        value = raw
    return key.split("."), value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    values = yaml.safe_load(yaml.safe_dump(values)) or {}  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            existing = node.get(part)
            if existing is None:
                existing = node[part] = {}
            if not isinstance(existing, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
            node = existing
        node[path[-1]] = value
    return values


def resolve_config_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.yaml", CONFIG_DIR / name_or_path):
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(f"config {name_or_path!r}: no such file, and not a name in {CONFIG_DIR}; "
                      f"known names: {', '.join(known) or 'none'}")


def load_config(name_or_path: str | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or a name in configs/), apply ``key=value`` overrides, validate."""
    values: dict = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: YAML syntax error: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(values).__name__}")
    return config_from_dict(apply_overrides(values, list(overrides)))


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
