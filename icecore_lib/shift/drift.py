"""The lab -> core shift of the features: plain drift (KS, SMD, PSI) and the class-conditional shift that separates
the instrument's session from the core's other class prior.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..frames import aligned
from ..schema import FLOWCAM_FEATURES


def feature_drift(
    train_df: pd.DataFrame,
    core_df: pd.DataFrame,
    features: Sequence[str] = FLOWCAM_FEATURES,
    bins: int = 10,
) -> pd.DataFrame:
    """Per feature: KS statistic (and p-value), standardised mean difference and PSI, worst PSI first.

    PSI bins are training deciles (``bins`` quantiles); rule of thumb: < 0.1 stable, 0.1-0.25 moderate,
    > 0.25 a shift worth a look. NaNs are dropped per feature.
    """
    for name, df in (("training", train_df), ("core", core_df)):
        missing = [f for f in features if f not in df.columns]
        if missing:
            raise KeyError(f"feature_drift: the {name} table lacks column(s) {missing}")
    rows = {f: _drift_row(_numeric(train_df, f, "training"), _numeric(core_df, f, "core"), bins) for f in features}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("feature").sort_values("psi", ascending=False)


def class_conditional_shift(
    train: pd.DataFrame,
    train_labels: pd.Series,
    core: pd.DataFrame,
    core_pred: pd.Series,
    min_count: int = 10,
) -> pd.DataFrame:
    """Per feature and class: core minus training mean within the same class, in pooled within-class SDs.

    The core's class prior differs from the lab's, so a plain train-vs-core drift mixes "more dust" with "a
    different instrument setting". Within one (predicted) class only the acquisition is left: a feature that
    shifts there measures the instrument, not the particle. Classes with fewer than ``min_count`` core
    particles are left out; column ``median_abs`` summarises each feature over classes (robust to one class
    hiding a new type), NaN where the feature does not vary within training classes.
    """
    labels = aligned(train_labels, train.index, "train_labels").to_numpy()
    pred = aligned(core_pred, core.index, "core_pred").to_numpy()
    spread = np.sqrt(train.groupby(labels).var(ddof=1).mean(axis=0))
    counts = pd.Series(pred).value_counts()
    classes = [c for c in np.unique(labels) if counts.get(c, 0) >= min_count]
    if not classes:
        raise ValueError(f"class_conditional_shift: no class has {min_count} core particles predicted")
    shift = pd.DataFrame({
        c: (core[pred == c].mean(axis=0) - train[labels == c].mean(axis=0)) / spread.where(spread > 0)
        for c in classes
    })
    return shift.assign(median_abs=shift.abs().median(axis=1, skipna=False)).rename_axis("feature")


def _numeric(df: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """A column's non-missing values as floats; names the table and column if it is not numeric."""
    if not pd.api.types.is_numeric_dtype(df[column]):
        raise TypeError(f"feature_drift: column {column!r} of the {name} table is not numeric ({df[column].dtype})")
    values = df[column].to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    if not len(values):
        raise ValueError(f"feature_drift: column {column!r} of the {name} table has no finite values")
    return values


def _drift_row(train: np.ndarray, core: np.ndarray, bins: int) -> dict[str, float]:
    """KS, SMD and PSI of one feature."""
    ks = stats.ks_2samp(train, core)
    pooled_sd = np.sqrt((train.var(ddof=1) + core.var(ddof=1)) / 2) if min(len(train), len(core)) > 1 else 0.0
    smd = (core.mean() - train.mean()) / pooled_sd if pooled_sd > 0 else 0.0
    return {
        "ks": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "smd": float(smd),
        "psi": psi(train, core, bins),
        "train_mean": float(train.mean()),
        "core_mean": float(core.mean()),
    }


def psi(reference: np.ndarray, other: np.ndarray, bins: int = 10, floor: float = 1e-4) -> float:
    """Population stability index of ``other`` against ``reference``, on the reference's quantile bins."""
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    p = np.maximum(np.histogram(reference, edges)[0] / len(reference), floor)
    q = np.maximum(np.histogram(other, edges)[0] / len(other), floor)
    return float(((q - p) * np.log(q / p)).sum())
