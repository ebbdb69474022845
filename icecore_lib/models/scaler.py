"""The metadata input of every model: FlowCam features log-scaled where skewed, then standardised on training rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..schema import FLOWCAM_FEATURES, SPLIT


class FeatureScaler(TransformerMixin, BaseEstimator):
    """Scale FlowCam features for neural nets: log1p on non-negative right-skewed columns, then standardise.

    FlowCam areas, volumes and intensities span orders of magnitude; a plain z-score would leave a few
    particles at +50 sigma. ``fit`` uses only the rows whose ``split`` is ``"train"`` when the table has a
    ``split`` column, so validation, test and core rows never leak into the scaling.
    """

    def __init__(self, columns: Sequence[str] = FLOWCAM_FEATURES, skew_threshold: float = 1.0) -> None:
        self.columns = columns
        self.skew_threshold = skew_threshold

    def fit(self, table: pd.DataFrame, y: Any = None) -> FeatureScaler:
        """Choose the log columns and learn mean/std on the training rows."""
        rows = _training_rows(table)
        values = self._values(rows)
        self.log_ = (values.min(axis=0) >= 0) & (_skewness(values) > self.skew_threshold)
        logged = self._log(values)
        self.mean_ = logged.mean(axis=0)
        std = logged.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Scaled ``(N, F)`` float32 features in the table's row order."""
        check_is_fitted(self)
        return ((self._log(self._values(table)) - self.mean_) / self.std_).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON-able values (for a checkpoint's metadata)."""
        check_is_fitted(self)
        return {
            "columns": list(self.columns),
            "skew_threshold": self.skew_threshold,
            "log": self.log_.tolist(),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureScaler:
        """Rebuild a fitted scaler from :meth:`state_dict`."""
        scaler = cls(state["columns"], state["skew_threshold"])
        scaler.log_ = np.asarray(state["log"], dtype=bool)
        scaler.mean_ = np.asarray(state["mean"], dtype=np.float64)
        scaler.std_ = np.asarray(state["std"], dtype=np.float64)
        return scaler

    def _values(self, table: pd.DataFrame) -> np.ndarray:
        """The feature columns as float64, with errors naming a missing column or a non-finite cell."""
        columns = list(self.columns)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise KeyError(f"feature table lacks column(s) {missing}")
        values = table[columns].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"feature column {columns[col]!r} is not finite at particle {table.index[row]!r} "
                f"({int(bad[:, col].sum())} bad row(s) in that column)"
            )
        return values

    def _log(self, values: np.ndarray) -> np.ndarray:
        """log1p on the log columns (negative values, unseen in training, clip to 0 first)."""
        out = values.copy()
        out[:, self.log_] = np.log1p(np.clip(values[:, self.log_], 0, None))
        return out


def _training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the training split (all rows when the table has no split column)."""
    if SPLIT not in table.columns:
        return table
    rows = table[table[SPLIT] == "train"]
    if rows.empty:
        raise ValueError(f"no rows with {SPLIT} == 'train' to fit on")
    return rows


def _skewness(values: np.ndarray) -> np.ndarray:
    """Per-column sample skewness (0 for constant columns)."""
    centred = values - values.mean(axis=0)
    std = centred.std(axis=0)
    third = (centred**3).mean(axis=0)
    return np.divide(third, std**3, out=np.zeros_like(std), where=std > 0)
