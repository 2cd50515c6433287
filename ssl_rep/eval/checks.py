"""Input checks shared by the evaluators: clear errors instead of NaNs deep inside a solver."""
from __future__ import annotations

import numpy as np


def check_features(X, name: str = "features", min_rows: int = 1) -> np.ndarray:
    if X is None:
        raise ValueError(f"{name}: got None")
    if getattr(X, "quantized_store", False):   # int8 codes: finite by construction; rows stream on demand
        if len(X) < min_rows or not np.isfinite(X.scale).all():
            raise ValueError(f"{name}: need at least {min_rows} rows with finite scales, got {X!r}")
        return X
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, D), got shape {X.shape}")
    if len(X) < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} rows, got {len(X)}")
    if not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name}: expected numbers, got dtype {X.dtype}")
    # In chunks: a memory-mapped store is read once and never held (nor a full-size mask) in RAM.
    n_bad, bad_rows = 0, []
    for start in range(0, len(X), 65536):
        bad = ~np.isfinite(np.asarray(X[start:start + 65536]))
        if bad.any():
            n_bad += int(bad.sum())
            bad_rows.extend((start + np.unique(np.nonzero(bad)[0])).tolist())
    if n_bad:
        raise ValueError(f"{name}: {n_bad} NaN/inf values in {len(bad_rows)} rows (first rows: "
                         f"{bad_rows[:5]}); the encoder may have diverged")
    return X


def check_labels(y, n: int, name: str = "labels") -> np.ndarray:
    if y is None:
        raise ValueError(f"{name}: required, but the dataset has none (all -1); a probe needs a labelled split")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected shape ({n},), got {y.shape}")
    if (y < 0).any():
        raise ValueError(f"{name}: {int((y < 0).sum())} samples have no label (-1); drop them or use a labelled split")
    return y.astype(np.int64)
