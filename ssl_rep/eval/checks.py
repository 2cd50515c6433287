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
    bad = ~np.isfinite(X)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} NaN/inf values in {len(rows)} rows (first rows: "
                         f"{rows[:5].tolist()}); the encoder may have diverged")
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
