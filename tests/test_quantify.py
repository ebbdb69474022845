"""Core composition: counts, confusion-adjusted counts, EM prior adjustment, bootstrap intervals, per group."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from icecore_lib.evaluate import UNASSIGNED
from icecore_lib.plots.classify import plot_composition, plot_composition_depth
from icecore_lib.quantify import (
    adjusted_count,
    bootstrap_composition,
    classify_and_count,
    composition_by_group,
    composition_error,
    em_prior_adjust,
    estimate_composition,
    group_errors,
)

CLASSES = ["camp", "dust", "grim"]
MEANS = np.array([0.0, 1.5, 3.0])


def _shifted_core(priors: list[float], n: int = 3000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Particles drawn with ``priors`` and their Bayes posteriors under uniform training priors."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASSES), size=n, p=priors)
    x = rng.normal(MEANS[labels], 1.0)
    likelihood = norm.pdf(x[:, None], MEANS[None, :], 1.0)
    proba = pd.DataFrame(likelihood / likelihood.sum(axis=1, keepdims=True), columns=CLASSES,
                         index=[f"core/p{i}.png" for i in range(n)])
    return proba, np.asarray(CLASSES, dtype=object)[labels]


def test_classify_and_count_leaves_unassigned_out():
    counts = classify_and_count(["camp", "camp", "dust", UNASSIGNED], CLASSES)
    assert counts.to_dict() == pytest.approx({"camp": 2 / 3, "dust": 1 / 3, "grim": 0.0})
    with pytest.raises(ValueError, match="qrob"):
        classify_and_count(["qrob"], CLASSES)


def test_adjusted_count_inverts_a_known_confusion():
    rates = pd.DataFrame([[0.8, 0.15, 0.05], [0.1, 0.85, 0.05], [0.0, 0.2, 0.8]], index=CLASSES, columns=CLASSES)
    truth = np.array([0.6, 0.3, 0.1])
    observed = np.round(truth @ rates.to_numpy() * 10000).astype(int)
    pred = np.repeat(CLASSES, observed)
    np.testing.assert_allclose(adjusted_count(pred, rates).to_numpy(), truth, atol=1e-3)
    assert not np.allclose(classify_and_count(pred, CLASSES).to_numpy(), truth, atol=0.02)


def test_em_recovers_a_prior_shift_better_than_raw_counts():
    truth = np.array([0.15, 0.75, 0.10])
    proba, _ = _shifted_core(list(truth))
    priors, posterior = em_prior_adjust(proba, pd.Series(1 / 3, index=CLASSES))
    raw = estimate_composition(proba, "cc")
    em_error, raw_error = np.abs(priors.to_numpy() - truth).sum(), np.abs(raw.to_numpy() - truth).sum()
    assert em_error < raw_error / 2 and em_error < 0.06
    assert posterior.index.equals(proba.index)
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0)


def test_estimate_composition_says_what_a_method_needs():
    proba, _ = _shifted_core([0.3, 0.4, 0.3], n=50)
    with pytest.raises(ValueError, match="train_priors"):
        estimate_composition(proba, "em")
    with pytest.raises(ValueError, match="confusion_rates"):
        estimate_composition(proba, "acc")
    with pytest.raises(ValueError, match="unknown composition method"):
        estimate_composition(proba, "magic")


def test_bootstrap_interval_contains_the_truth_and_is_deterministic():
    truth = np.array([0.5, 0.3, 0.2])
    proba, _ = _shifted_core(list(truth), n=2000, seed=5)
    table = bootstrap_composition(proba, "em", n_boot=100, seed=0, train_priors=[1 / 3] * 3)
    assert ((table["ci_low"] <= truth) & (truth <= table["ci_high"])).all()
    assert (table["ci_low"] <= table["fraction"]).all() and (table["fraction"] <= table["ci_high"]).all()
    again = bootstrap_composition(proba, "em", n_boot=100, seed=0, train_priors=[1 / 3] * 3)
    pd.testing.assert_frame_equal(table, again)


def _two_samples() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two core samples with different compositions, and their sample id and (per-particle) depth."""
    shallow, _ = _shifted_core([0.8, 0.1, 0.1], n=600, seed=1)
    deep, _ = _shifted_core([0.1, 0.1, 0.8], n=600, seed=2)
    proba = pd.concat([shallow, deep.set_axis([f"deep/{i}" for i in range(600)])])
    depth = np.r_[np.linspace(10.0, 10.2, 600), np.linspace(20.0, 20.2, 600)]
    groups = pd.DataFrame({"sample_id": ["S1"] * 600 + ["S2"] * 600, "depth_m": depth}, index=proba.index)
    return proba, groups


def test_composition_by_group_is_a_long_table_per_sample():
    proba, groups = _two_samples()
    table = composition_by_group(proba, groups["sample_id"], "em", n_boot=20, depth=groups["depth_m"],
                                 train_priors=[1 / 3] * 3, progress=False)
    assert list(table.columns) == ["sample_id", "depth_m", "class", "fraction", "ci_low", "ci_high", "n_particles"]
    assert len(table) == 6 and (table["n_particles"] == 600).all()
    assert table.groupby("sample_id")["depth_m"].first().tolist() == pytest.approx([10.1, 20.1])
    fractions = table.set_index(["sample_id", "class"])["fraction"]
    assert fractions["S1", "camp"] > 0.6 and fractions["S2", "grim"] > 0.6
    np.testing.assert_allclose(table.groupby("sample_id")["fraction"].sum(), 1.0)


def test_composition_error_compares_raw_and_corrected_with_known_classes_only():
    truth = np.array([0.15, 0.75, 0.10])
    proba, labels = _shifted_core(list(truth), seed=3)
    labels = np.concatenate([labels, ["diatom"] * 30])
    estimates = {"cc": estimate_composition(proba, "cc"),
                 "em": estimate_composition(proba, "em", train_priors=[1 / 3] * 3)}
    error = composition_error(estimates, labels)
    assert error["truth"].sum() == pytest.approx(1.0)
    assert error["em_abs_error"].sum() < error["cc_abs_error"].sum()
    assert error.loc["dust", "cc_abs_error"] == pytest.approx(abs(estimates["cc"]["dust"] - error.loc["dust", "truth"]))


def test_composition_plots_return_figures_and_save_pngs(tmp_path):
    proba, groups = _two_samples()
    priors = [1 / 3] * 3
    raw = bootstrap_composition(proba, "cc", n_boot=20)
    corrected = bootstrap_composition(proba, "em", n_boot=20, train_priors=priors)
    truth = pd.Series([0.45, 0.1, 0.45], index=CLASSES)
    by_depth = composition_by_group(proba, groups["sample_id"], "em", n_boot=10, depth=groups["depth_m"],
                                    train_priors=priors, progress=False)
    fig = plot_composition({"raw": raw, "EM": corrected}, truth=truth, path=tmp_path / "composition.png")
    depth_fig = plot_composition_depth(by_depth, path=tmp_path / "depth.png")
    assert depth_fig.axes[0].yaxis_inverted()
    errors = fig.axes[1].patches  # the lower panel: each method's estimate - truth, class by class
    np.testing.assert_allclose([p.get_height() for p in errors[:3]], raw["fraction"] - truth)
    assert len(plot_composition({"raw": raw}).axes) == 1  # no truth, no error panel
    for name in ("composition.png", "depth.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="depth_m"):
        plot_composition_depth(by_depth.drop(columns="depth_m"))


def test_group_errors_score_each_sample_against_its_own_truth():
    shallow, shallow_y = _shifted_core([0.8, 0.1, 0.1], n=600, seed=1)
    deep, deep_y = _shifted_core([0.1, 0.1, 0.8], n=600, seed=2)
    proba = pd.concat([shallow, deep.set_axis([f"deep/{i}" for i in range(600)])])
    labels = pd.Series(np.r_[shallow_y, deep_y], index=proba.index)
    samples = pd.Series(["S1"] * 600 + ["S2"] * 600, index=proba.index, name="sample_id")
    by_group = {m: composition_by_group(proba, samples, m, train_priors=[1 / 3] * 3, progress=False) for m in ("cc", "em")}
    errors = group_errors(by_group, labels, samples)
    assert list(errors.index) == ["S1", "S2"] and list(errors.columns) == ["cc", "em"]
    em_deep = by_group["em"].set_index(["sample_id", "class"])["fraction"]["S2"].reindex(CLASSES)
    truth_deep = pd.Series(deep_y).value_counts(normalize=True).reindex(CLASSES, fill_value=0.0)
    assert errors.loc["S2", "em"] == pytest.approx(np.mean(np.abs(em_deep.to_numpy() - truth_deep.to_numpy())))
    assert (errors["em"] < errors["cc"]).all()  # each sample's prior shift biases its raw counts
