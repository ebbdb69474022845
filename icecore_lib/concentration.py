"""Concentrations (particles per ml of meltwater) per sample and class, with exact intervals, and size distributions.

Counting interval: the count ``n`` of a class in a sample is Poisson, so its interval is the exact Garwood one,
``[Gamma(n).ppf(a/2), Gamma(n + 1).ppf(1 - a/2)] / volume`` with ``a = 1 - level`` (``lo = 0`` when ``n = 0``; the
upper bound of a zero count is ``-ln(a/2)``, 3.69 particles at 95 %). No normal approximation is used anywhere.

Total interval (counting and classification): see :func:`concentration_table`.

Size distributions bin the equivalent spherical diameter (ESD, µm) on a log grid; volume is that of the equivalent
sphere, ``pi / 6 * ESD**3``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import gammainc, gammaincinv

from .frames import finite_values
from .schema import VOLUME

ALL = "all"
# Default ESD grid: edges at 2**(k / BINS_PER_OCTAVE) µm, so every sample and class shares the same bins.
BINS_PER_OCTAVE = 4
# Tolerance on a probability row's sum (float32 softmax outputs sum to 1 within ~1e-6).
ROW_SUM_TOLERANCE = 1e-4
# Relative widening of a root bracket, so rounding at its ends cannot hide the sign change.
SLACK = 1e-9
# Most particle x class comparisons made at once when drawing classes (bounds the memory used).
DRAW_BLOCK = 2**21
COLUMNS = ("sample", "class", "n", VOLUME, "per_ml", "per_ml_lo", "per_ml_hi", "n_expected", "per_ml_total_lo",
           "per_ml_total_hi")


def _first(ids: Sequence[Any] | pd.Index, k: int = 5) -> list[Any]:
    """The first ``k`` ids, for error messages."""
    return list(ids[:k])


def _same_ids(series: pd.Series | pd.DataFrame, index: pd.Index, name: str) -> pd.Series | pd.DataFrame:
    """``series`` in the order of ``index``; names ids duplicated, missing from or extra to the particle index."""
    if not series.index.is_unique:
        raise ValueError(f"{name}: duplicated particle id(s), e.g. {_first(series.index[series.index.duplicated()])}")
    missing, extra = index.difference(series.index), series.index.difference(index)
    if len(missing) or len(extra):
        raise ValueError(f"{name} is not aligned with labels: {len(missing)} particle id(s) missing "
                         f"(e.g. {_first(missing)}), {len(extra)} extra (e.g. {_first(extra)})")
    return series.loc[index]


def _no_missing(series: pd.Series, name: str) -> pd.Series:
    """``series`` unchanged; names the particles whose value is missing."""
    if series.isna().any():
        raise ValueError(f"{name}: missing value for {int(series.isna().sum())} particle(s), "
                         f"e.g. {_first(series.index[series.isna()])}")
    return series


def _check_level(level: float) -> None:
    """Fail unless 0 < level < 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")


def garwood_interval(n: np.ndarray | int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Garwood) confidence interval of a Poisson mean given observed count(s) ``n``."""
    _check_level(level)
    counts = np.asarray(n, dtype=float)
    tail = (1 - level) / 2
    lo = np.where(counts > 0, gammaincinv(np.maximum(counts, 1), tail), 0.0)
    return lo, gammaincinv(counts + 1, 1 - tail)


def _gamma_cdf_mixture(x: float, shapes: np.ndarray, weights: np.ndarray) -> float:
    """CDF at ``x`` of a mixture of Gamma(shape, 1) laws (shape 0 is a point mass at 0)."""
    cdf = np.where(shapes > 0, gammainc(np.maximum(shapes, 1), x), 1.0)
    return float(weights @ cdf)


def mixture_interval(counts: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Garwood interval averaged over a distribution of counts (one per draw): bounds of the mixed confidence laws.

    The lower bound solves ``mean_b P(Gamma(n_b) <= lo) = a/2``, the upper ``mean_b P(Gamma(n_b + 1) <= hi) = 1 - a/2``;
    when every draw has the same count this is exactly :func:`garwood_interval`."""
    _check_level(level)
    shapes, freq = np.unique(np.asarray(counts, dtype=int), return_counts=True)
    weights = freq / freq.sum()
    tail = (1 - level) / 2
    lows, highs = garwood_interval(shapes, level)
    lo_edges, hi_edges = lows[[0, -1]], highs[[0, -1]]
    if weights[shapes == 0].sum() >= tail:
        lo = 0.0
    elif lo_edges[0] == lo_edges[1]:
        lo = float(lo_edges[0])
    else:
        lo = brentq(lambda x: _gamma_cdf_mixture(x, shapes, weights) - tail, 0.0, lo_edges[1] * (1 + SLACK), xtol=1e-12)
    if hi_edges[0] == hi_edges[1]:
        return lo, float(hi_edges[0])
    hi = brentq(lambda x: _gamma_cdf_mixture(x, shapes + 1, weights) - (1 - tail), hi_edges[0] * (1 - SLACK),
                hi_edges[1] * (1 + SLACK), xtol=1e-12)
    return lo, hi


def _checked_volumes(volumes: pd.Series, samples: pd.Series) -> pd.Series:
    """Volumes (ml) as floats, checked unique, finite and positive, and present for every particle's sample."""
    if not volumes.index.is_unique:
        raise ValueError(f"volumes: duplicated sample id(s) {_first(volumes.index[volumes.index.duplicated()])}")
    values = pd.to_numeric(volumes, errors="coerce").astype(float)
    bad = values.index[~(np.isfinite(values) & (values > 0))]
    if len(bad):
        raise ValueError(f"volumes: the imaged volume must be a positive number of ml; sample(s) "
                         f"{_first(bad)} have {_first(volumes.loc[bad].tolist())}")
    missing = pd.Index(samples.unique()).difference(values.index)
    if len(missing):
        raise ValueError(f"no volume (ml) for {len(missing)} sample(s) with particles: {_first(missing)}")
    return values


def _class_list(labels: pd.Series, probabilities: pd.DataFrame | None, classes: Sequence[str] | None,
                merge: Mapping[str, str]) -> list[str]:
    """The classes before merging: ``classes``, else the probability columns, else the labels and merge names."""
    if classes is not None:
        keys = list(classes)
    elif probabilities is not None:
        keys = list(probabilities.columns)
    else:
        keys = sorted({*labels.unique(), *merge, *merge.values()}, key=str)
    if len(set(keys)) != len(keys) or ALL in keys:
        raise ValueError(f"classes must be distinct and none may be called {ALL!r}: {keys}")
    unknown = labels.index[~labels.isin(keys)]
    if len(unknown):
        raise ValueError(f"label(s) {sorted(set(labels[unknown]), key=str)} are not among the classes {keys} "
                         f"(particles e.g. {_first(unknown)})")
    return keys


def _checked_probabilities(probabilities: pd.DataFrame, index: pd.Index, classes: list[str]) -> pd.DataFrame:
    """Probabilities on the particle index with one column per class, non-negative rows summing to 1."""
    unknown = [c for c in probabilities.columns if c not in classes]
    absent = [c for c in classes if c not in probabilities.columns]
    if unknown or absent:
        raise ValueError(f"probability columns must be the classes {classes}: unknown column(s) {unknown}, "
                         f"missing {absent}")
    frame = _same_ids(probabilities, index, "probabilities")[classes]
    values = finite_values(frame, "probabilities")
    negative = frame.index[(values < 0).any(axis=1)]
    if len(negative):
        raise ValueError(f"probabilities: negative value(s) for particle(s) {_first(negative)}")
    sums = values.sum(axis=1)
    off = frame.index[np.abs(sums - 1) > ROW_SUM_TOLERANCE]
    if len(off):
        raise ValueError(f"probabilities: {len(off)} row(s) do not sum to 1, e.g. particle(s) {_first(off)} "
                         f"sum to {_first(sums[np.abs(sums - 1) > ROW_SUM_TOLERANCE].round(6).tolist())}")
    return pd.DataFrame(values / sums[:, None], index=frame.index, columns=classes)


def _merged(labels: pd.Series, probabilities: pd.DataFrame | None, classes: list[str],
            merge: Mapping[str, str]) -> tuple[pd.Series, pd.DataFrame | None, list[str]]:
    """Labels, probabilities and classes with each ``merge`` source counted as its target class."""
    bad = {s: t for s, t in merge.items() if s not in classes or t not in classes or t in merge or s == t}
    if bad:
        raise ValueError(f"merge {bad}: each source and target must be one of the classes {classes}, "
                         "and a target may not itself be merged")
    kept = [c for c in classes if c not in merge]
    labels = labels.map(lambda key: merge.get(key, key))
    if probabilities is not None:
        probabilities = probabilities.copy()
        for source, target in merge.items():
            probabilities[target] += probabilities[source]
        probabilities = probabilities[kept]
    return labels, probabilities, kept


def _class_draw_counts(probabilities: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, classes) counts, each draw giving every particle a class drawn from its probability row."""
    n, k = probabilities.shape
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative[:, -1] = 1.0
    block = max(1, DRAW_BLOCK // max(n * k, 1))
    draws = []
    for first in range(0, n_boot, block):
        uniform = rng.random((min(block, n_boot - first), n, 1))
        drawn = (uniform >= cumulative).sum(axis=2)
        draws.append(np.stack([(drawn == j).sum(axis=1) for j in range(k)], axis=1))
    return np.concatenate(draws)


def _sample_rows(codes: np.ndarray, probabilities: np.ndarray | None, n_classes: int, n_boot: int, level: float,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One sample's counts and intervals (in particles), one entry per class and 'all' last."""
    n = np.append(np.bincount(codes, minlength=n_classes), len(codes))
    lo, hi = garwood_interval(n, level)
    rows = {"n": n, "lo": lo, "hi": hi}
    if probabilities is None:
        return {**rows, "expected": np.full(len(n), np.nan), "total_lo": np.full(len(n), np.nan),
                "total_hi": np.full(len(n), np.nan)}
    draws = _class_draw_counts(probabilities, n_boot, rng)
    bounds = np.array([mixture_interval(draws[:, j], level) for j in range(n_classes)] + [(lo[-1], hi[-1])])
    expected = np.append(probabilities.sum(axis=0), len(codes))
    return {**rows, "expected": expected, "total_lo": bounds[:, 0], "total_hi": bounds[:, 1]}


def concentration_table(labels: pd.Series, samples: pd.Series, volumes: pd.Series, *,
                        probabilities: pd.DataFrame | None = None, classes: Sequence[str] | None = None,
                        merge: Mapping[str, str] | None = None, n_boot: int = 200, level: float = 0.95,
                        seed: int = 0) -> pd.DataFrame:
    """Particles per ml of meltwater per sample and class (and an 'all' row per sample), with exact intervals.

    ``labels`` (predicted class) and ``samples`` (sample or run id) are indexed by particle id; ``volumes`` maps
    sample id -> fluid volume imaged (ml) and lists the samples reported, in its order: a sample with a volume and
    no particle gets rows with ``n = 0``. ``classes`` defaults to the probability columns, else the labels seen (and
    the names in ``merge``). ``merge`` (e.g. ``{"Missed": "Junk"}``) counts a class as another; the source then has
    no row.

    Columns: sample, class, n, volume_ml, per_ml = n / volume_ml, per_ml_lo/per_ml_hi (counting alone: the exact
    Garwood interval on n, divided by the volume, which is taken as exact), and with ``probabilities`` (particle
    id x class, rows summing to 1 within 1e-4, then renormalised; ideally calibrated) n_expected (the sum of the
    class's probabilities) and per_ml_total_lo/per_ml_total_hi (counting and classification); NaN without them.

    Total interval: ``n_boot`` draws give every particle of the sample a class drawn from its probability row
    (independently), so each draw is one plausible set of true class counts ``n_b``. The counting uncertainty of
    each draw is taken exactly, not by resampling the particle set: the bounds are those of the Garwood confidence
    laws averaged over the draws (``mean_b P(Gamma(n_b) <= lo) = a/2``, ``mean_b P(Gamma(n_b + 1) <= hi) = 1 - a/2``,
    ``a = 1 - level``; :func:`mixture_interval`). A Poisson resample of the particles would give a similar spread
    for large counts, but too short an upper tail for small ones and a zero-width interval for a class never seen.
    With one-hot probabilities every draw repeats the labels' counts and the total interval is the counting one;
    the 'all' row never depends on the classes. The interval is centred on n_expected, not on n: where the labels
    and the probabilities disagree (an argmax over diffuse probabilities), per_ml may fall outside it. It adds the
    two variances (as multiple imputation does), so with perfectly calibrated probabilities it is conservative
    (covers more often than ``level``); errors shared by many particles (a miscalibrated or shifted classifier)
    are not covered, as the draws are independent given the probabilities.
    """
    _check_level(level)
    if not labels.index.is_unique:
        raise ValueError(f"labels: duplicated particle id(s), e.g. {_first(labels.index[labels.index.duplicated()])}")
    labels = _no_missing(labels, "labels")
    samples = _no_missing(_same_ids(samples, labels.index, "samples"), "samples")
    volumes = _checked_volumes(volumes, samples)
    merge = dict(merge or {})
    keys = _class_list(labels, probabilities, classes, merge)
    if probabilities is not None:
        if n_boot < 1:
            raise ValueError(f"n_boot must be at least 1 with probabilities, got {n_boot}")
        probabilities = _checked_probabilities(probabilities, labels.index, keys)
    labels, probabilities, keys = _merged(labels, probabilities, keys, merge)
    codes = pd.Categorical(labels, categories=keys).codes.astype(np.int64)
    values = None if probabilities is None else probabilities.to_numpy()
    positions = samples.groupby(samples, sort=False).indices
    rng = np.random.default_rng(seed)
    parts = []
    for sample in volumes.index:
        at = positions.get(sample, np.array([], dtype=np.int64))
        parts.append(_sample_rows(codes[at], None if values is None else values[at], len(keys), n_boot, level, rng))
    return _as_table(parts, volumes, keys, level)


def _as_table(parts: list[dict[str, np.ndarray]], volumes: pd.Series, classes: list[str], level: float
              ) -> pd.DataFrame:
    """The long concentration table from each sample's counts and intervals (in particles)."""
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
    rows = len(classes) + 1
    volume = np.repeat(volumes.to_numpy(), rows)
    table = pd.DataFrame({"sample": np.repeat(volumes.index.to_numpy(), rows), "class": [*classes, ALL] * len(volumes),
                          "n": joined.get("n", np.array([], dtype=np.int64)), VOLUME: volume})
    for column, key in (("per_ml", "n"), ("per_ml_lo", "lo"), ("per_ml_hi", "hi"), ("n_expected", "expected"),
                        ("per_ml_total_lo", "total_lo"), ("per_ml_total_hi", "total_hi")):
        values = joined.get(key, np.array([], dtype=float))
        table[column] = values if key == "expected" else values / volume
    table.attrs["level"] = level
    return table[list(COLUMNS)]


def _esd(esd_um: pd.Series, labels: pd.Series) -> tuple[pd.Series, pd.Series]:
    """ESD (µm, float) and labels on the same particle ids; names particles with a missing or non-positive ESD."""
    labels = _no_missing(labels, "labels")
    if not labels.index.is_unique:
        raise ValueError(f"labels: duplicated particle id(s), e.g. {_first(labels.index[labels.index.duplicated()])}")
    esd = pd.to_numeric(_same_ids(esd_um, labels.index, "esd_um"), errors="coerce").astype(float)
    bad = esd.index[~(np.isfinite(esd) & (esd > 0))]
    if len(bad):
        raise ValueError(f"esd_um: {len(bad)} particle(s) with a missing or non-positive ESD, e.g. {_first(bad)}")
    if esd.empty:
        raise ValueError("esd_um: no particle")
    return esd, labels


def default_bins(esd_um: np.ndarray) -> np.ndarray:
    """Log-spaced ESD edges (µm) at 2**(k/4), i.e. 4 per octave, from below the smallest to above the largest."""
    smallest, largest = float(np.min(esd_um)), float(np.max(esd_um))
    first = np.floor(np.log2(smallest) * BINS_PER_OCTAVE)
    first -= 2.0 ** (first / BINS_PER_OCTAVE) > smallest
    last = max(np.ceil(np.log2(largest) * BINS_PER_OCTAVE), first + 1)
    last += 2.0 ** (last / BINS_PER_OCTAVE) < largest
    return 2.0 ** (np.arange(first, last + 1) / BINS_PER_OCTAVE)


def _checked_bins(bins: np.ndarray, esd: pd.Series) -> np.ndarray:
    """Bin edges checked positive, increasing and covering every particle."""
    edges = np.asarray(bins, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or not (np.isfinite(edges).all() and (edges > 0).all()):
        raise ValueError(f"bins must be at least 2 positive finite edges (µm), got {edges.tolist()}")
    if (np.diff(edges) <= 0).any():
        raise ValueError(f"bins must increase, got {edges.tolist()}")
    outside = esd.index[(esd < edges[0]) | (esd > edges[-1])]
    if len(outside):
        raise ValueError(f"{len(outside)} particle(s) have an ESD outside the bins [{edges[0]}, {edges[-1]}] µm, "
                         f"e.g. {_first(outside)}")
    return edges


def sphere_volume_um3(esd_um: np.ndarray | pd.Series) -> np.ndarray:
    """Volume (µm³) of the sphere of diameter ``esd_um``."""
    return np.pi / 6 * np.asarray(esd_um, dtype=float) ** 3


def size_distribution(esd_um: pd.Series, labels: pd.Series, *, bins: np.ndarray | None = None) -> pd.DataFrame:
    """Number and volume distributions of ESD per class on log bins (µm; default :func:`default_bins`).

    Columns: class, bin_lo_um, bin_hi_um, number, number_fraction, volume_um3 (sum of pi/6 * ESD**3),
    volume_fraction; fractions sum to 1 per class. Bins are [lo, hi), the last one closed; with ``bins`` given,
    every particle must fall inside them.
    """
    esd, labels = _esd(esd_um, labels)
    edges = default_bins(esd.to_numpy()) if bins is None else _checked_bins(bins, esd)
    parts = []
    for key, part in esd.groupby(labels, sort=True):
        number = np.histogram(part, edges)[0]
        volume = np.histogram(part, edges, weights=sphere_volume_um3(part))[0]
        parts.append(pd.DataFrame({"class": key, "bin_lo_um": edges[:-1], "bin_hi_um": edges[1:], "number": number,
                                   "number_fraction": number / number.sum(), "volume_um3": volume,
                                   "volume_fraction": volume / volume.sum()}))
    return pd.concat(parts, ignore_index=True)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The value at half the total weight (the mean of the two neighbours on an exact tie, as ``np.median``)."""
    order = np.argsort(values)
    ordered, cumulative = np.asarray(values, dtype=float)[order], np.cumsum(np.asarray(weights, dtype=float)[order])
    half = cumulative[-1] / 2
    k = int(np.searchsorted(cumulative, half))
    if np.isclose(cumulative[k], half) and k + 1 < len(ordered):
        return float((ordered[k] + ordered[k + 1]) / 2)
    return float(ordered[k])


def size_summary(esd_um: pd.Series, labels: pd.Series) -> pd.DataFrame:
    """Per class (index): n, d50_number_um (median ESD) and d50_volume_um (ESD halving the sphere volume)."""
    esd, labels = _esd(esd_um, labels)
    rows = {key: {"n": len(part), "d50_number_um": float(np.median(part)),
                  "d50_volume_um": weighted_median(part.to_numpy(), sphere_volume_um3(part))}
            for key, part in esd.groupby(labels, sort=True)}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")


def subtract_blanks(table: pd.DataFrame, blanks: Sequence[str], *, level: float = 0.95, n_draws: int = 4000,
                    seed: int = 0) -> pd.DataFrame:
    """The procedural blanks' particles per ml subtracted from every other sample, per class, with the interval.

    ``table``: a :func:`concentration_table`; ``blanks``: its sample ids that are procedural blanks (clean water
    through the melter and the instrument: what the lab adds to every sample). The blanks are pooled per class
    (their counts over their summed volume) and leave the table. Added columns: ``blank_per_ml``, ``per_ml_net``
    (per_ml minus blank_per_ml; negative where a sample holds fewer than the blanks, kept so that no bias is
    introduced) and ``per_ml_net_lo``/``per_ml_net_hi``: quantiles of the difference of the two rates, each drawn
    from the Jeffreys posterior of its Poisson count (Gamma(n + 1/2)) over its volume, so the blanks' own
    counting uncertainty is carried into the interval.
    """
    _check_level(level)
    missing = [b for b in blanks if b not in set(table["sample"])]
    if missing:
        raise ValueError(f"blank sample(s) {', '.join(map(repr, missing))} not among the samples "
                         f"({', '.join(map(str, dict.fromkeys(table['sample'])))})")
    is_blank = table["sample"].isin(blanks)
    pooled = table[is_blank].groupby("class", sort=False)[["n", "volume_ml"]].sum()
    rest = table[~is_blank].reset_index(drop=True)
    n_b = pooled["n"].reindex(rest["class"]).to_numpy(dtype=float)
    v_b = pooled["volume_ml"].reindex(rest["class"]).to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    draws = (rng.gamma(rest["n"].to_numpy(dtype=float)[:, None] + 0.5, size=(len(rest), n_draws))
             / rest["volume_ml"].to_numpy(dtype=float)[:, None]
             - rng.gamma(n_b[:, None] + 0.5, size=(len(rest), n_draws)) / v_b[:, None])
    alpha = 1 - level
    rest["blank_per_ml"] = n_b / v_b
    rest["per_ml_net"] = rest["per_ml"] - rest["blank_per_ml"]
    rest["per_ml_net_lo"], rest["per_ml_net_hi"] = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=1)
    return rest


__all__ = [
    "subtract_blanks",
    "ALL",
    "BINS_PER_OCTAVE",
    "concentration_table",
    "default_bins",
    "garwood_interval",
    "mixture_interval",
    "size_distribution",
    "size_summary",
    "sphere_volume_um3",
    "weighted_median",
]
