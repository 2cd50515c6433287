"""Int8 quantization of encoders (PyTorch's FX graph-mode stack) and of stored features.

Encoders: :func:`quantize_encoder` fuses conv + BatchNorm (+ ReLU), calibrates activation ranges on
a few hundred images and converts to int8 kernels (x86/fbgemm, onednn or qnnpack), returning a CPU
module with the encoder's ``forward``/``num_features`` contract. Weights: per output channel,
symmetric, in [-127, 127] (never -128, so negating a weight is exact). Activations: per tensor,
affine uint8 with an integer zero-point, so 0.0 (ReLU outputs, zero padding) is represented exactly.

The x86, fbgemm and onednn kernels multiply u8 activations by s8 weights with ``vpmaddubsw`` on
CPUs without VNNI, which adds pairs of products in int16 and saturates when activations use all 8
bits; there activations are calibrated to 7 bits (``reduce_range``, as PyTorch's own x86 qconfig
does). CPUs with AVX-512 VNNI accumulate in int32 and keep the full range, and so does qnnpack on
any CPU. oneDNN (the onednn engine, and x86's convolutions) uses VNNI only where ``ONEDNN_MAX_CPU_ISA``
allows it: capped at ``AVX2`` it runs the saturating kernels on any CPU, which is also how a VNNI
machine tests the other path. The choice is made at calibration time and kept in
``QuantizedEncoder.reduce_range``. With ``qat_epochs`` > 0, fake-quantized fine-tuning follows: the int8 student learns to reproduce the
float encoder's features on the calibration images (a pretext-free distillation objective).

Features: :func:`quantize_features` stores ``(N, D)`` features as int8 codes with a float scale and
an integer zero-point per dimension (4x smaller than float32; ``fp16`` is the 2x option), and
:class:`QuantizedFeatures` reads like a float32 array (``len``, ``shape``, slicing, ``np.asarray``),
so :class:`~ssl_rep.eval.LinearProbe`, :func:`~ssl_rep.eval.cluster` and
:class:`~ssl_rep.eval.KNNClassifier` take it as it is. :func:`save_features` / :func:`load_features`
keep a store on disk as memory-mapped ``.npy`` files.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data.base import spread_indices

INT8_SYMMETRIC = (-127, 127)   # weights: symmetric, -128 unused
FEATURE_CODE_RANGE = (-128, 127)   # stored features: affine, the full int8 range


# ---------------------------------------------------------------- encoders
def cpu_has_vnni() -> bool:
    """Whether this CPU has AVX-512 VNNI, the int32-accumulating u8 x s8 instruction fbgemm/oneDNN use."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read().split()
    except OSError:
        return False


@contextlib.contextmanager
def quantized_engine(backend: str):
    """``torch.backends.quantized.engine`` set to ``backend`` inside the block, restored after it."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = backend
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def onednn_may_use_vnni() -> bool:
    """Whether ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``) leaves oneDNN its VNNI kernels:
    unset, ``ALL``, or a cap at or above a VNNI level (``AVX2_VNNI``, ``AVX512_CORE_VNNI``, ``*_BF16``,
    ``*_AMX``, ``AVX10_*``). ``SSE41``, ``AVX``, ``AVX2`` and ``AVX512_CORE`` leave only the int16 path."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap == "ALL" or cap.startswith("AVX10") or any(level in cap for level in ("VNNI", "BF16", "FP16", "AMX"))


def needs_reduce_range(backend: str) -> bool:
    """7-bit activations where the backend's kernels can saturate their int16 pair sums on this CPU: fbgemm
    without VNNI, oneDNN without VNNI or capped below it, x86 (both libraries) where either can."""
    if backend == "qnnpack":
        return False
    fbgemm_saturates = not cpu_has_vnni()
    onednn_saturates = fbgemm_saturates or not onednn_may_use_vnni()
    return fbgemm_saturates if backend == "fbgemm" else onednn_saturates   # x86 runs both libraries


def _qconfig(qat: bool, reduce_range: bool):
    from torch.ao.quantization import (FakeQuantize, HistogramObserver, MovingAverageMinMaxObserver,
                                       MovingAveragePerChannelMinMaxObserver, PerChannelMinMaxObserver, QConfig)
    lo, hi = INT8_SYMMETRIC
    if qat:
        act = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, dtype=torch.quint8, quant_min=0,
                                     quant_max=127 if reduce_range else 255, qscheme=torch.per_tensor_affine)
        weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, dtype=torch.qint8,
                                        quant_min=lo, quant_max=hi, qscheme=torch.per_channel_symmetric, ch_axis=0)
        return QConfig(activation=act, weight=weight)
    return QConfig(activation=HistogramObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                                          reduce_range=reduce_range),
                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                             quant_min=lo, quant_max=hi))


def _batches(data, batch_size: int, limit: int):
    """Float image batches ``(B, 3, H, W)`` from a tensor, a dataset of ``(image, label)`` or an iterable."""
    if isinstance(data, torch.Tensor):
        for start in range(0, min(len(data), limit), batch_size):
            yield data[start:min(start + batch_size, limit)].float()
        return
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(torch.utils.data.Subset(data, spread_indices(len(data), limit)),
                                           batch_size=batch_size)
    seen = 0
    for batch in data:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        yield x.float()
        seen += len(x)
        if seen >= limit:
            return


class QuantizedEncoder(nn.Module):
    """An int8 encoder (CPU): ``forward(float images) -> float features (B, num_features)``."""

    quantized = True

    def __init__(self, model: nn.Module, source: nn.Module, backend: str, reduce_range: bool = False):
        super().__init__()
        self.model = model
        self.backend = backend
        self.reduce_range = reduce_range
        self.num_features = source.num_features
        self.encoder_name = getattr(source, "encoder_name", type(source).__name__)
        self.encoder_kwargs = dict(getattr(source, "encoder_kwargs", {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError("a quantized encoder runs on the CPU (int8 kernels); pass CPU tensors")
        with quantized_engine(self.backend):
            return self.model(x.float())

    def weight_codes(self) -> dict[str, torch.Tensor]:
        """The int8 weight codes of every quantized conv/linear layer, by module name."""
        return {name: m.weight().int_repr() for name, m in self.model.named_modules()
                if callable(getattr(m, "weight", None)) and m.weight().is_quantized}

    def extra_repr(self) -> str:
        bits = "7-bit" if self.reduce_range else "8-bit"
        return f"{self.encoder_name}, int8 ({self.backend}, {bits} activations), num_features={self.num_features}"


def quantize_encoder(encoder: nn.Module, calibration_data, num_calibration: int = 512, batch_size: int = 128,
                     backend: str | None = None, qat_epochs: int = 0, qat_lr: float = 1e-5,
                     reduce_range: bool | None = None, progress: bool = False) -> QuantizedEncoder:
    """Post-training static int8 quantization of ``encoder`` (unchanged; a copy is quantized).

    ``calibration_data``: images as a float tensor ``(N, 3, H, W)``, a dataset of ``(image, label)``
    or an iterable of batches, normalised as the encoder expects; the first ``num_calibration`` are
    used. ``backend``: ``x86``, ``fbgemm``, ``onednn`` or ``qnnpack``, the kernels the encoder later
    runs with; default: ``torch.backends.quantized.engine`` (PyTorch's own default is x86 on x86 CPUs). ``reduce_range``: calibrate activations to 7 bits;
    ``None`` (default) decides from the backend and the CPU (:func:`needs_reduce_range`).
    ``qat_epochs``: passes of fake-quantized fine-tuning over the calibration images, the student
    matching the float encoder's features (MSE), before conversion.
    """
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

    engines = torch.backends.quantized.supported_engines
    current = torch.backends.quantized.engine
    backend = backend or (current if current in engines and current != "none" else
                          "x86" if "x86" in engines else "qnnpack")
    if backend not in engines:
        raise ValueError(f"quantization backend {backend!r} is not in this PyTorch build; available: "
                         f"{', '.join(e for e in engines if e != 'none')}")
    if not hasattr(encoder, "num_features"):
        raise TypeError(f"quantize_encoder needs an ssl_rep encoder (with num_features), got {type(encoder).__name__}")
    if reduce_range is None:
        reduce_range = needs_reduce_range(backend)
    float_model = copy.deepcopy(encoder).cpu().float().eval()
    calib = list(_batches(calibration_data, batch_size, num_calibration))
    if not calib:
        raise ValueError("quantize_encoder: calibration_data holds no images")
    example = (calib[0][:2],)
    with warnings.catch_warnings(), quantized_engine(backend):
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        if qat_epochs > 0:
            from torch.ao.nn.intrinsic.qat import freeze_bn_stats
            qconfig = QConfigMapping().set_global(_qconfig(True, reduce_range))
            student = prepare_qat_fx(copy.deepcopy(float_model).train(), qconfig, example)
            student.apply(freeze_bn_stats)   # BatchNorm keeps the pretrained statistics
            opt = torch.optim.Adam(student.parameters(), lr=qat_lr)
            for _ in tqdm(range(qat_epochs), desc="quantization-aware fine-tuning", disable=not progress):
                for x in calib:
                    with torch.no_grad():
                        target = float_model(x)
                    loss = nn.functional.mse_loss(student(x), target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            prepared = student.eval()
        else:
            prepared = prepare_fx(float_model, QConfigMapping().set_global(_qconfig(False, reduce_range)), example)
            with torch.no_grad():
                for x in tqdm(calib, desc="calibrating int8 ranges", disable=not progress):
                    prepared(x)
        model = convert_fx(prepared)
    return QuantizedEncoder(model, encoder, backend, reduce_range).eval()


# ---------------------------------------------------------------- stored features
def affine_qparams(lo: np.ndarray, hi: np.ndarray, qmin: int = FEATURE_CODE_RANGE[0],
                   qmax: int = FEATURE_CODE_RANGE[1]) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension scale and integer zero-point for values in ``[lo, hi]``. The range is widened to
    include 0 and the zero-point is an integer, so 0.0 maps to a code and back to exactly 0.0."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = np.where(scale > 0, scale, 1.0)
    zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int32)
    return scale.astype(np.float32), zero_point


def quantize_values(X: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    qmin, qmax = FEATURE_CODE_RANGE
    return np.clip(np.round(np.asarray(X, np.float32) / scale) + zero_point, qmin, qmax).astype(np.int8)


def dequantize_values(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    return ((codes.astype(np.int32) - zero_point) * scale).astype(np.float32)


class QuantizedFeatures:
    """Int8 feature codes with per-dimension ``scale`` and ``zero_point``; reads as float32.

    ``X[i]``, ``X[a:b]``, ``X[index_array]`` and ``np.asarray(X)`` give dequantized float32 rows;
    only the rows asked for are expanded, so a memory-mapped store streams.
    """

    dtype = np.dtype(np.float32)
    ndim = 2
    quantized_store = True   # check_features passes it through: the evaluators stream its rows

    def __init__(self, codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray):
        if codes.ndim != 2 or codes.dtype != np.int8:
            raise ValueError(f"codes must be int8 (N, D), got {codes.dtype} {codes.shape}")
        if scale.shape != (codes.shape[1],) or zero_point.shape != (codes.shape[1],):
            raise ValueError(f"scale and zero_point must have shape ({codes.shape[1]},)")
        self.codes, self.scale, self.zero_point = codes, scale.astype(np.float32), zero_point.astype(np.int32)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the float32 rows it stands for (what a solver holding them all would need)."""
        return int(self.codes.size * 4)

    @property
    def stored_bytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.zero_point.nbytes)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, index) -> np.ndarray:
        return dequantize_values(self.codes[index], self.scale, self.zero_point)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.empty(self.shape, np.float32)
        for start in range(0, len(self), 65536):
            out[start:start + 65536] = self[start:start + 65536]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"QuantizedFeatures(n={len(self)}, dim={self.shape[1]}, int8, {self.stored_bytes / 2**20:.1f} MiB)"


def quantize_features(X, dtype: str = "int8"):
    """``(N, D)`` float features -> :class:`QuantizedFeatures` (``int8``) or a float16 array (``fp16``).
    Scale and zero-point come from each dimension's min and max (read in chunks: memmaps stream)."""
    if dtype == "fp16":
        return np.asarray(X, dtype=np.float16)
    if dtype != "int8":
        raise ValueError(f"feature storage dtype must be 'int8' or 'fp16', got {dtype!r}")
    from .eval.checks import check_features
    X = check_features(X, "features")
    lo = np.full(X.shape[1], np.inf, np.float32)
    hi = np.full(X.shape[1], -np.inf, np.float32)
    for start in range(0, len(X), 65536):
        chunk = np.asarray(X[start:start + 65536], np.float32)
        lo, hi = np.minimum(lo, chunk.min(0)), np.maximum(hi, chunk.max(0))
    scale, zero_point = affine_qparams(lo, hi)
    codes = np.empty(X.shape, np.int8)
    for start in range(0, len(X), 65536):
        codes[start:start + 65536] = quantize_values(X[start:start + 65536], scale, zero_point)
    return QuantizedFeatures(codes, scale, zero_point)


def save_features(folder: str | Path, X, dtype: str = "int8") -> Path:
    """Write ``X`` under ``folder`` as ``codes.npy`` + ``scale.npy`` + ``zero_point.npy`` (int8),
    ``features.npy`` (fp16/fp32), and ``store.json`` saying which."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dtype == "int8":
        q = X if isinstance(X, QuantizedFeatures) else quantize_features(X, "int8")
        np.save(folder / "codes.npy", q.codes)
        np.save(folder / "scale.npy", q.scale)
        np.save(folder / "zero_point.npy", q.zero_point)
    elif dtype in ("fp16", "fp32"):
        np.save(folder / "features.npy", np.asarray(X, np.float16 if dtype == "fp16" else np.float32))
    else:
        raise ValueError(f"feature storage dtype must be 'int8', 'fp16' or 'fp32', got {dtype!r}")
    (folder / "store.json").write_text(json.dumps({"format": "ssl_rep.features/1", "dtype": dtype}))
    return folder


def load_features(folder: str | Path):
    """A store written by :func:`save_features`, memory-mapped: QuantizedFeatures or a float array."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "store.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{folder}: not a feature store written by ssl_rep.quantize.save_features ({exc})") from exc
    if meta.get("dtype") == "int8":
        return QuantizedFeatures(np.load(folder / "codes.npy", mmap_mode="r"), np.load(folder / "scale.npy"),
                                 np.load(folder / "zero_point.npy"))
    return np.load(folder / "features.npy", mmap_mode="r")
