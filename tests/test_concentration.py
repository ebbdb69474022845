"""Concentrations per ml with exact Poisson and total intervals, size distributions, and their figures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

from icecore_lib.concentration import (
    ALL,
    concentration_table,
    default_bins,
    garwood_interval,
    mixture_interval,
    size_distribution,
    size_summary,
)
from icecore_lib.plots.concentration import concentration_figure, size_distribution_figure


def _particles(counts: dict[str, dict[str, int]]) -> tuple[pd.Series, pd.Series]:
    """Labels and samples of particles made from per-sample class counts, ids like 's1/p3'."""
    labels, samples, ids = [], [], []
    for sample, per_class in counts.items():
        for key, n in per_class.items():
            for _ in range(n):
                ids.append(f"{sample}/p{len(ids)}")
                labels.append(key)
                samples.append(sample)
    index = pd.Index(ids, name="particle_id")
    return pd.Series(labels, index=index, dtype=object), pd.Series(samples, index=index, dtype=object)


def _row(table: pd.DataFrame, sample: str, key: str) -> pd.Series:
    """The table's row for one sample and class."""
    rows = table[(table["sample"] == sample) & (table["class"] == key)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_per_ml_is_count_over_volume_with_the_exact_poisson_interval():
    labels, samples = _particles({"s1": {"dust": 7, "qrob": 2}, "s2": {"dust": 40}})
    volumes = pd.Series({"s1": 2.5, "s2": 0.8})
    table = concentration_table(labels, samples, volumes, classes=["dust", "qrob", "camp"])
    assert list(table["class"]) == ["dust", "qrob", "camp", ALL] * 2
    np.testing.assert_array_equal(table["per_ml"], table["n"] / table["volume_ml"])
    n = table["n"].to_numpy(dtype=float)
    lo = np.where(n > 0, chi2.ppf(0.025, 2 * np.maximum(n, 1)) / 2, 0.0)
    np.testing.assert_allclose(table["per_ml_lo"], lo / table["volume_ml"], rtol=1e-10)
    np.testing.assert_allclose(table["per_ml_hi"], chi2.ppf(0.975, 2 * n + 2) / 2 / table["volume_ml"], rtol=1e-10)
    assert _row(table, "s1", ALL)["n"] == 9 and _row(table, "s2", "qrob")["n"] == 0
    assert table["per_ml_total_lo"].isna().all()


def test_zero_count_has_lower_bound_zero_and_poisson_upper_bound():
    labels, samples = _particles({"s1": {"dust": 3}})
    volumes = pd.Series({"s1": 2.0, "empty": 4.0})
    table = concentration_table(labels, samples, volumes, classes=["dust", "camp"])
    camp = _row(table, "s1", "camp")
    assert camp["n"] == 0 and camp["per_ml"] == 0 and camp["per_ml_lo"] == 0
    assert camp["per_ml_hi"] == pytest.approx(-np.log(0.025) / 2.0) == pytest.approx(3.689 / 2.0, abs=1e-3)
    empty = table[table["sample"] == "empty"]
    assert (empty["n"] == 0).all() and np.allclose(empty["per_ml_hi"], 3.6889 / 4.0, atol=1e-4)


def test_counting_interval_covers_the_true_rate_at_the_nominal_level():
    rate, volume, draws = 12.0, 2.5, 400
    counts = np.random.default_rng(3).poisson(rate * volume, size=draws)
    labels, samples = _particles({f"s{i}": {"dust": int(n)} for i, n in enumerate(counts)})
    table = concentration_table(labels, samples, pd.Series(volume, index=[f"s{i}" for i in range(draws)]))
    dust = table[table["class"] == "dust"]
    coverage = ((dust["per_ml_lo"] <= rate) & (rate <= dust["per_ml_hi"])).mean()
    assert 0.92 <= coverage <= 0.98


def _two_class_probabilities(labels: pd.Series, confidence: float) -> pd.DataFrame:
    """Probabilities giving each particle's label ``confidence`` and the other class the rest."""
    own = np.where(labels == "dust", confidence, 1 - confidence)
    return pd.DataFrame({"dust": own, "camp": 1 - own}, index=labels.index)


def test_total_interval_is_wider_with_uncertain_probabilities_and_equals_counting_when_one_hot():
    labels, samples = _particles({"s1": {"dust": 30, "camp": 30}})
    volumes = pd.Series({"s1": 3.0})
    one_hot = concentration_table(labels, samples, volumes, probabilities=_two_class_probabilities(labels, 1.0))
    np.testing.assert_allclose(one_hot["per_ml_total_lo"], one_hot["per_ml_lo"], rtol=1e-9)
    np.testing.assert_allclose(one_hot["per_ml_total_hi"], one_hot["per_ml_hi"], rtol=1e-9)
    unsure = concentration_table(labels, samples, volumes, probabilities=_two_class_probabilities(labels, 0.7))
    width = unsure["per_ml_hi"] - unsure["per_ml_lo"]
    total_width = unsure["per_ml_total_hi"] - unsure["per_ml_total_lo"]
    by_class = dict(zip(unsure["class"], total_width / width))
    assert by_class["dust"] > 1.1 and by_class["camp"] > 1.1 and by_class[ALL] == pytest.approx(1.0)
    assert _row(unsure, "s1", "dust")["n_expected"] == pytest.approx(30.0)


def test_mixture_interval_reduces_to_garwood_and_widens_with_spread():
    lo, hi = garwood_interval(np.array([0, 5]))
    assert mixture_interval(np.zeros(50, dtype=int)) == pytest.approx((0.0, hi[0]))
    assert mixture_interval(np.full(50, 5)) == pytest.approx((lo[1], hi[1]))
    spread = mixture_interval(np.array([3, 4, 5, 5, 6, 7] * 10))
    assert spread[0] < lo[1] and spread[1] > hi[1]


def test_total_interval_covers_with_calibrated_probabilities():
    rng = np.random.default_rng(5)
    rate, volume, n_samples = 10.0, 5.0, 150
    truth = rate * 0.3  # true dust per ml: E[p] of Beta(1.5, 3.5)
    counts = rng.poisson(rate * volume, size=n_samples)
    p = rng.beta(1.5, 3.5, size=counts.sum())
    sample_ids = np.repeat([f"s{i}" for i in range(n_samples)], counts)
    index = pd.Index([f"p{i}" for i in range(len(p))])
    labels = pd.Series(np.where(p > 0.5, "dust", "camp"), index=index)
    probabilities = pd.DataFrame({"dust": p, "camp": 1 - p}, index=index)
    volumes = pd.Series(volume, index=pd.unique(sample_ids))
    table = concentration_table(labels, pd.Series(sample_ids, index=index), volumes, probabilities=probabilities,
                                n_boot=100, seed=1)
    dust = table[table["class"] == "dust"]
    assert ((dust["per_ml_total_lo"] <= truth) & (truth <= dust["per_ml_total_hi"])).mean() >= 0.95
    assert ((dust["per_ml_lo"] <= truth) & (truth <= dust["per_ml_hi"])).mean() < 0.8  # argmax counts are biased


def test_merge_counts_missed_as_junk():
    labels, samples = _particles({"s1": {"Junk": 3, "Missed": 2, "Ice": 1}})
    probabilities = pd.DataFrame({"Junk": 0.6, "Missed": 0.3, "Ice": 0.1}, index=labels.index)
    table = concentration_table(labels, samples, pd.Series({"s1": 1.0}), probabilities=probabilities,
                                merge={"Missed": "Junk"})
    assert list(table["class"]) == ["Junk", "Ice", ALL]
    assert _row(table, "s1", "Junk")["n"] == 5 and _row(table, "s1", ALL)["n"] == 6
    assert _row(table, "s1", "Junk")["n_expected"] == pytest.approx(6 * 0.9)
    with pytest.raises(ValueError, match="merge"):
        concentration_table(labels, samples, pd.Series({"s1": 1.0}), probabilities=probabilities,
                            merge={"Missed": "Dust"})
    no_missed = labels[labels != "Missed"]
    table = concentration_table(no_missed, samples[no_missed.index], pd.Series({"s1": 1.0}), merge={"Missed": "Junk"})
    assert list(table["class"]) == ["Ice", "Junk", ALL] and _row(table, "s1", "Junk")["n"] == 3


def test_errors_name_what_is_wrong():
    labels, samples = _particles({"s1": {"dust": 2}, "s2": {"dust": 1}})
    with pytest.raises(ValueError, match="no volume.*s2"):
        concentration_table(labels, samples, pd.Series({"s1": 1.0}))
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="s2"):
            concentration_table(labels, samples, pd.Series({"s1": 1.0, "s2": bad}))
    volumes = pd.Series({"s1": 1.0, "s2": 1.0})
    with pytest.raises(ValueError, match="not aligned"):
        concentration_table(labels, samples.iloc[1:], volumes)
    off = _two_class_probabilities(labels, 0.9)
    off.iloc[1] = [0.5, 0.2]
    with pytest.raises(ValueError, match=f"sum to 1.*{labels.index[1]}"):
        concentration_table(labels, samples, volumes, probabilities=off)
    extra = _two_class_probabilities(labels, 0.9).assign(qrob=0.0)
    with pytest.raises(ValueError, match="unknown column.*qrob"):
        concentration_table(labels, samples, volumes, probabilities=extra, classes=["dust", "camp"])
    with pytest.raises(ValueError, match="not among the classes"):
        concentration_table(labels, samples, volumes, classes=["camp"])


def test_size_distribution_fractions_sum_to_one_and_volume_weights_large_particles():
    esd = pd.Series([2.0] * 9 + [20.0] + [5.0, 6.0, 7.0], index=[f"p{i}" for i in range(13)])
    labels = pd.Series(["dust"] * 10 + ["qrob"] * 3, index=esd.index)
    dist = size_distribution(esd, labels)
    assert set(dist.columns) >= {"class", "bin_lo_um", "bin_hi_um", "number", "number_fraction", "volume_um3",
                                 "volume_fraction"}
    sums = dist.groupby("class")[["number_fraction", "volume_fraction"]].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    dust = dist[dist["class"] == "dust"]
    big = dust[(dust["bin_lo_um"] <= 20) & (20 < dust["bin_hi_um"])].iloc[0]
    assert big["number_fraction"] == pytest.approx(0.1)
    assert big["volume_fraction"] == pytest.approx(20**3 / (20**3 + 9 * 2**3))
    assert dust["volume_um3"].sum() == pytest.approx(np.pi / 6 * (9 * 8 + 8000))
    ratios = dust["bin_hi_um"] / dust["bin_lo_um"]
    np.testing.assert_allclose(ratios, 2**0.25)


def test_default_bins_cover_the_data_on_a_shared_grid():
    edges = default_bins(np.array([2.0, 3.3, 64.0]))
    assert edges[0] <= 2.0 and edges[-1] >= 64.0
    np.testing.assert_allclose(np.log2(edges) * 4, np.round(np.log2(edges) * 4))
    assert len(default_bins(np.array([5.0]))) == 2


def test_size_summary_d50_by_number_and_by_volume():
    esd = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 10.0], index=[f"p{i}" for i in range(7)])
    labels = pd.Series(["dust"] * 5 + ["camp"] * 2, index=esd.index)
    summary = size_summary(esd, labels)
    assert summary.loc["dust", "n"] == 5 and summary.loc["dust", "d50_number_um"] == 3.0
    assert summary.loc["dust", "d50_volume_um"] == 5.0  # cumulative volume 1, 9, 36, 100 | 225 passes half at 5
    assert summary.loc["camp", "d50_number_um"] == 10.0 == summary.loc["camp", "d50_volume_um"]


def test_size_errors_name_the_particles():
    labels = pd.Series(["dust"] * 4, index=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"\['b', 'd'\]"):
        size_distribution(pd.Series([3.0, np.nan, 4.0, 0.0], index=labels.index), labels)
    with pytest.raises(ValueError, match="outside the bins.*'d'"):
        size_distribution(pd.Series([3.0, 4.0, 5.0, 50.0], index=labels.index), labels, bins=np.array([1.0, 10.0]))


@pytest.mark.parametrize("n_samples", [1, 12])
def test_figures_render(tmp_path: Path, n_samples: int):
    rng = np.random.default_rng(n_samples)
    counts = {f"s{i}": {"dust": int(rng.integers(50, 300)), "qrob": int(rng.integers(0, 4)), "camp": 0}
              for i in range(n_samples)}
    labels, samples = _particles(counts)
    probabilities = _two_class_probabilities(labels.where(labels == "dust", "camp"), 0.8).assign(qrob=0.0)
    probabilities.loc[labels == "qrob"] = [0.1, 0.1, 0.8]
    table = concentration_table(labels, samples, pd.Series(1.5, index=list(counts)), probabilities=probabilities,
                                n_boot=20)
    figure = concentration_figure(table, tmp_path / "concentration.png")
    assert (tmp_path / "concentration.png").stat().st_size > 0
    assert figure.axes[0].get_yscale() == "log"
    esd = pd.Series(rng.lognormal(2.0, 0.6, size=len(labels)), index=labels.index)
    size_distribution_figure(size_distribution(esd, labels), tmp_path / "sizes.png")
    assert (tmp_path / "sizes.png").stat().st_size > 0
