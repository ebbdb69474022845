"""Per-particle tables and matrices: rows aligned by particle id, finite values, (N, D) matrices keyed by particle id.

Errors name the particle (or row) that is wrong.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .schema import PARTICLE_ID


def aligned(table: pd.DataFrame | pd.Series, index: pd.Index, name: str) -> pd.DataFrame | pd.Series:
    """Rows of ``table`` in the order of ``index``; names missing or duplicated particle ids."""
    if not table.index.is_unique:
        raise ValueError(f"{name}: duplicated particle id(s), e.g. {list(table.index[table.index.duplicated()][:3])}")
    missing = index.difference(table.index)
    if len(missing):
        raise KeyError(f"{name}: {len(missing)} particle id(s) missing, e.g. {list(missing[:3])}")
    return table.loc[index]


def finite_values(table: pd.DataFrame | pd.Series, name: str) -> np.ndarray:
    """The table's values as a float array; names the first particle with a NaN/inf value."""
    values = table.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values).reshape(len(values), -1).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: non-finite value for particle {table.index[bad.argmax()]!r} ({bad.sum()} rows)")
    return values


ArrayOrFrame = np.ndarray | pd.DataFrame


def as_matrix(X: ArrayOrFrame, name: str = "X") -> tuple[np.ndarray, pd.Index | None]:
    """A finite float32 ``(N, D)`` matrix and the DataFrame's index (None for arrays); errors name the bad row."""
    index = X.index if isinstance(X, pd.DataFrame) else None
    if index is not None:
        text = [str(c) for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if text:
            raise ValueError(f"{name} has non-numeric columns {text}")
    values = np.asarray(X, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N points x D dims), got shape {values.shape}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        where = f"particle_id {index[row]!r}" if index is not None else f"row {row}"
        raise ValueError(f"{name} has non-finite values ({int((~finite).sum())} rows), first at {where}")
    return np.ascontiguousarray(values), index


def embedding_frame(Y: np.ndarray, index: pd.Index | None, prefix: str = "umap") -> ArrayOrFrame:
    """Wrap a low-dimensional embedding as a DataFrame on ``index`` (``umap_1``, ``umap_2``, ...) when one is given."""
    if index is None:
        return Y
    columns = [f"{prefix}_{i + 1}" for i in range(Y.shape[1])]
    frame = pd.DataFrame(Y, index=index, columns=columns)
    frame.index.name = index.name or PARTICLE_ID
    return frame


def check_n_features(X: np.ndarray, n_features: int, name: str = "X") -> None:
    """Fail clearly when data to transform has another width than the data fitted on."""
    if X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} columns but the reducer was fitted on {n_features}")
