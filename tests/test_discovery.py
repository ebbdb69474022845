"""Notebook 05's choice of the scores the combined rank averages and its open-set composition, on hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from icecore_lib.quantify import composition_error
from icecore_lib.stages.discovery import choose_scores, open_set_compositions


def _loco(auroc: dict[str, float]) -> pd.DataFrame:
    """A leave-one-class-out table with only its ``mean`` row's AUROCs filled in."""
    columns = pd.MultiIndex.from_product([[*auroc, "combined_rank"], ["auroc", "fpr95"]], names=["score", "metric"])
    row = {(s, m): (auroc.get(s, 0.5) if m == "auroc" else 0.5) for s, m in columns}
    return pd.DataFrame([row, row], index=pd.Index(["dust", "mean"], name="held_out"), columns=columns)


def test_the_best_loco_score_is_skipped_when_the_acquisition_shift_moves_it() -> None:
    loco = _loco({"energy": 0.95, "excess_meta": 0.86, "knn_meta": 0.83, "recon": 0.60})
    shift = pd.Series({"energy": 0.25, "excess_meta": 0.0, "knn_meta": 0.01, "recon": -0.02})
    choice = choose_scores(loco, shift, margin=0.05, max_shift=0.05)
    assert list(choice.index[choice["chosen"]]) == ["excess_meta", "knn_meta"]
    assert not choice.loc["energy", "stable"] and "combined_rank" not in choice.index
    narrow = choose_scores(loco, shift, margin=0.01, max_shift=0.05)
    assert list(narrow.index[narrow["chosen"]]) == ["excess_meta"]
    with pytest.raises(ValueError, match="max_score_shift"):
        choose_scores(loco, shift + 1, margin=0.05, max_shift=0.05)


def test_a_score_near_the_best_on_average_but_blind_to_one_held_out_class_is_not_averaged_in() -> None:
    # maha_meta: as good as excess_meta on average, but misses the pollen fold (the demo core's diatoms alike).
    folds = {"corylus": {"excess_meta": 0.67, "maha_meta": 0.41, "knn_meta": 0.64},
             "dust": {"excess_meta": 0.81, "maha_meta": 0.96, "knn_meta": 0.80},
             "grim": {"excess_meta": 0.88, "maha_meta": 0.94, "knn_meta": 0.86}}
    table = pd.DataFrame(folds).T
    table.loc["mean"] = table.mean()
    columns = pd.MultiIndex.from_product([[*table.columns, "combined_rank"], ["auroc"]], names=["score", "metric"])
    loco = pd.DataFrame({(s, "auroc"): table[s] if s in table else 0.5 for s, _ in columns}, columns=columns)
    shift = pd.Series(0.0, index=table.columns)
    choice = choose_scores(loco, shift, margin=0.05, max_shift=0.05)
    assert choice.loc["maha_meta", "loco_auroc"] >= choice.loc["excess_meta", "loco_auroc"] - 0.05
    assert list(choice.index[choice["chosen"]]) == ["excess_meta", "knn_meta"]
    assert choice.loc["maha_meta", "loco_worst_auroc"] == pytest.approx(0.41)


def test_when_no_score_is_near_the_best_on_both_counts_the_best_on_average_is_kept_alone() -> None:
    columns = pd.MultiIndex.from_product([["excess_meta", "knn_meta", "combined_rank"], ["auroc"]],
                                         names=["score", "metric"])
    folds = {"corylus": [0.50, 0.70, 0.5], "dust": [0.95, 0.70, 0.5], "mean": [0.725, 0.70, 0.5]}
    loco = pd.DataFrame(folds.values(), index=pd.Index(list(folds), name="held_out"), columns=columns)
    choice = choose_scores(loco, pd.Series(0.0, index=["excess_meta", "knn_meta"]), margin=0.01, max_shift=0.05)
    assert list(choice.index[choice["chosen"]]) == ["excess_meta"]


def test_setting_the_flagged_unknowns_aside_recovers_the_known_composition() -> None:
    truth = pd.Series(["ash"] * 70 + ["dust"] * 30 + ["diatom"] * 40)
    looks_like = truth.replace({"diatom": "dust"})  # the new class is counted as its look-alike
    p_dust = np.where(looks_like == "dust", 0.9, 0.1)
    core_pred = pd.DataFrame({"p_ash": 1 - p_dust, "p_dust": p_dust}, index=[f"core/{i}.png" for i in range(140)])
    truth.index = core_pred.index
    unknown = pd.Series(truth == "diatom", index=core_pred.index)
    unknown.iloc[:3] = True  # a few known particles are flagged too
    table = pd.DataFrame({"label": ["ash", "dust"] * 20, "split": "train"})
    compositions = open_set_compositions(core_pred, unknown, table, n_boot=5, seed=0)
    assert list(compositions) == ["CC, all particles", "EM, all particles", "CC, unknowns set aside",
                                  "EM, unknowns set aside"]
    assert compositions["CC, all particles"].loc["dust", "fraction"] == pytest.approx(70 / 140)
    assert compositions["CC, unknowns set aside"].loc["dust", "fraction"] == pytest.approx(30 / 97)
    errors = composition_error({m: c["fraction"] for m, c in compositions.items()}, truth)
    assert errors["CC, unknowns set aside_abs_error"].mean() < errors["CC, all particles_abs_error"].mean() / 5
    with pytest.raises(ValueError, match="every core particle is flagged"):
        open_set_compositions(core_pred, unknown | True, table, n_boot=0, seed=0)
