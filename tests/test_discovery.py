"""Notebook 05's choice of the scores the combined rank averages and its open-set composition, on hand-made tables."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from icecore_lib.config import DiscoveryConfig
from icecore_lib.quantify import composition_error
from icecore_lib.schema import LABEL, SESSION, SPLIT
from icecore_lib.stages.discovery import (
    ScorerInputs,
    ShiftCheck,
    choose_scores,
    core_inputs,
    drift_scores,
    open_set_compositions,
    session_rank_shift,
)


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


def _inputs(centres: np.ndarray, ids: pd.Index, rng: np.random.Generator) -> ScorerInputs:
    """Logits, loss and two embeddings around per-particle centres."""
    def table(width: int, prefix: str) -> pd.DataFrame:
        return pd.DataFrame(centres[:, None] + rng.normal(0, 0.3, (len(ids), width)), index=ids,
                            columns=[f"{prefix}{i}" for i in range(width)])

    return ScorerInputs(table(3, "z"), pd.Series(centres + rng.normal(0, 0.3, len(ids)), index=ids, name="recon"),
                        {"cnn": table(4, "c"), "meta": table(2, "m")})


def test_aligned_core_inputs_lose_each_sessions_offset_but_keep_a_new_types() -> None:
    rng = np.random.default_rng(1)
    centre = {"a": 0.0, "b": 4.0, "c": 8.0}
    labels = np.repeat(list(centre), 300)
    train_ids = pd.Index([f"t{i}" for i in range(len(labels))])
    lab = _inputs(np.array([centre[c] for c in labels]), train_ids, rng)
    pred = np.tile(list(centre), 200)
    sessions = np.repeat(["s1", "s2"], 300)
    new = np.arange(len(pred)) % 50 == 0  # 2% of the core: a type 20 units away, predicted as its class
    core_ids = pd.Index([f"k{i}" for i in range(len(pred))])
    true = np.array([centre[c] for c in pred]) + np.where(new, 20.0, 0.0)
    offset = np.where(sessions == "s1", 3.0, -2.0)
    core = _inputs(true + offset, core_ids, rng)
    reference = pd.DataFrame({SPLIT: "train", LABEL: labels}, index=train_ids)
    session = pd.Series(sessions, index=core_ids, name=SESSION)
    fixed = core_inputs(lab, core, reference, session, pd.Series(pred, index=core_ids), DiscoveryConfig())
    for part in (fixed.logits, fixed.recon.to_frame(), fixed.embeddings["cnn"]):
        residual = part.sub(true, axis=0)
        assert residual[~new].abs().mean().max() < 0.4  # each session's offset gone
        assert residual[new].mean().abs().max() < 0.4  # the new type still 20 away from its class
    assert fixed.embeddings["meta"].equals(core.embeddings["meta"])  # the metadata space comes aligned already
    assert fixed.sessions.equals(session) and fixed.rows(core_ids[:5]).sessions.equals(session.iloc[:5])
    plain = core_inputs(lab, core, reference, session, pd.Series(pred, index=core_ids),
                        DiscoveryConfig(align_sessions=False, excess_across_sessions=False))
    assert plain.logits.equals(core.logits) and plain.sessions is None
    assert fixed.recon.name == "recon"


def test_session_rank_shift_names_the_session_whose_known_particles_rank_high_not_a_new_type() -> None:
    rng = np.random.default_rng(2)
    lab_pred = np.repeat([0, 1, 2], 400)
    lab_rank = pd.Series(rng.uniform(0, 0.8, len(lab_pred)))
    core_pred = np.tile([0, 1, 2], 400)
    sessions = pd.Series(np.repeat(["dark", "clean"], 600), name="session")
    rank = rng.uniform(0, 0.8, len(core_pred)) + np.where(sessions == "dark", 0.2, 0.0)
    new = (sessions == "clean").to_numpy() & (core_pred == 1) & (np.arange(len(core_pred)) % 2 == 0)
    rank[new] = 0.99  # half of one class in the clean session is a new type: it moves that class, not the median
    shift = session_rank_shift(pd.Series(rank), core_pred, lab_rank, lab_pred, sessions)
    assert shift["dark"] == pytest.approx(0.2, abs=0.04)
    assert shift["clean"] == pytest.approx(0.0, abs=0.04)
    check = ShiftCheck(shift.to_frame(), max_shift=0.05)
    assert not check.trusted and check.metrics()["max_abs_rank_shift"] == pytest.approx(shift.abs().max())
    assert ShiftCheck(shift.drop("dark").to_frame(), max_shift=0.05).trusted


def test_the_drift_of_a_group_score_is_read_in_its_space_because_the_score_is_centred_on_the_core() -> None:
    assert drift_scores(["excess_meta"]) == ["knn_meta"]
    assert drift_scores(["excess_cnn", "maha_cnn", "knn_cnn", "recon"]) == ["knn_cnn", "maha_cnn", "recon"]
