"""Novelty scores, their evaluation, and the lab -> core drift checks, on tiny synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from icecore_lib.novelty.detectors import ClassMahalanobis, CoreExcess, KNNDistance
from icecore_lib.novelty.metrics import (
    flag_fraction_by_group,
    fpr_at_tpr,
    loco_novelty_table,
    novelty_metrics,
    traffic_light,
    traffic_light_by_group,
    unknown_threshold,
)
from icecore_lib.novelty.scorer import NoveltyScorer
from icecore_lib.novelty.scores import CLASSIFIER_SCORES, classifier_scores
from icecore_lib.shift.align import align_core, session_offsets
from icecore_lib.shift.drift import class_conditional_shift, feature_drift


def _ids(prefix: str, n: int) -> pd.Index:
    return pd.Index([f"{prefix}/{i:04d}.png" for i in range(n)], name="particle_id")


def _blobs(seed: int = 0, n: int = 60, dim: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Two training classes: unit Gaussians around 0 and around 4 in every coordinate."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (n, dim)), rng.normal(4, 1, (n, dim))])
    return X, np.repeat(["a", "b"], n)


@pytest.mark.parametrize("name", list(CLASSIFIER_SCORES))
def test_classifier_scores_rank_uniform_softmax_above_peaked(name: str) -> None:
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [8.0, 0.0, 0.0, 0.0]])
    uniform, peaked = CLASSIFIER_SCORES[name](logits)
    assert uniform > peaked


def test_classifier_scores_table_keeps_particle_ids_and_rejects_nan() -> None:
    logits = pd.DataFrame([[1.0, 2.0], [3.0, 0.0]], index=_ids("core", 2))
    table = classifier_scores(logits)
    assert list(table.columns) == list(CLASSIFIER_SCORES)
    assert table.index.equals(logits.index)
    logits.iloc[1, 0] = np.nan
    with pytest.raises(ValueError, match="core/0001.png"):
        classifier_scores(logits)


FITTERS = {
    "knn": lambda X, y: KNNDistance(k=5, progress=False).fit(X),
    "mahalanobis": lambda X, y: ClassMahalanobis(progress=False).fit(X, y),
}


@pytest.mark.parametrize("name", list(FITTERS))
def test_embedding_detectors_score_far_blob_higher_without_refit(name: str) -> None:
    X, y = _blobs()
    detector = FITTERS[name](X, y)
    fitted_train_scores = detector.train_scores_.copy()
    rng = np.random.default_rng(1)
    near = rng.normal(0, 1, (20, X.shape[1]))
    far = rng.normal(25, 1, (20, X.shape[1]))
    near_scores, far_scores = detector.score_samples(near), detector.score_samples(far)
    assert far_scores.min() > near_scores.max()
    # scoring is per particle and leaves the fit untouched: the same far points score the same in a mixed batch
    np.testing.assert_allclose(detector.score_samples(np.vstack([near, far]))[20:], far_scores)
    np.testing.assert_array_equal(detector.train_scores_, fitted_train_scores)


def test_knn_training_scores_leave_each_point_out() -> None:
    X, _ = _blobs()
    knn = KNNDistance(k=3, aggregate="kth", progress=False).fit(X)
    others = np.sort(np.linalg.norm(X[1:] - X[0], axis=1))
    assert knn.train_scores_[0] == pytest.approx(others[2], rel=1e-5)
    with pytest.raises(ValueError, match="more than k"):
        KNNDistance(k=10).fit(X[:5])


def _inputs(X: np.ndarray, index: pd.Index, seed: int, far: bool = False) -> dict:
    """Logits, reconstruction loss, one embedding and one 2-D map for particles at X."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * X.shape[1], [4.0] * X.shape[1]])
    logits = -((X[:, None, :] - centres[None]) ** 2).sum(axis=2) / 4
    recon = np.abs(X).mean(axis=1) + rng.normal(0, 0.05, len(X))
    return {
        "logits": pd.DataFrame(logits, index=index, columns=["a", "b"]),
        "recon": pd.Series(recon, index=index),
        "embeddings": {"cnn": pd.DataFrame(X, index=index)},
        "maps": {"umap": pd.DataFrame(X[:, :2], index=index)},
    }


def _planted_scores(reference: str) -> tuple[pd.DataFrame, pd.Index]:
    """Scores of 80 core particles like the training classes plus 10 planted far away; the planted ids."""
    X, y = _blobs()
    train_ids = _ids("train", len(X))
    scorer = NoveltyScorer(k=5, quantile=0.05, reference=reference, progress=False)
    scorer.fit(**_inputs(X, train_ids, 0), labels=pd.Series(y, index=train_ids))
    rng = np.random.default_rng(2)
    known, _ = _blobs(seed=3, n=40)
    # halfway between the two classes (the classifier is torn) and far off the line joining them
    planted = rng.normal(2, 1, (10, X.shape[1])) + np.array([12, -12, 12, -12, 12, -12])
    core_ids = _ids("core", 90)
    return scorer.score_samples(**_inputs(np.vstack([known, planted]), core_ids, 4)), core_ids[-10:]


@pytest.mark.parametrize("reference", ["train", "scored"])
def test_combined_rank_puts_planted_far_blob_on_top(reference: str) -> None:
    scores, planted = _planted_scores(reference)
    assert {"median", "msp", "entropy", "energy", "recon", "knn_cnn", "maha_cnn", "knn_umap"} <= set(scores.columns)
    assert set(scores["combined_rank"].nlargest(10).index) == set(planted)


def test_flagged_by_names_the_scores_beyond_the_training_quantile() -> None:
    scores, planted = _planted_scores("train")
    assert scores.loc[planted, "flagged_by"].str.contains("knn_cnn").all()
    assert scores.loc[planted, "flagged_by"].str.contains("maha_cnn").all()
    assert scores["n_flags"].equals(scores["flagged_by"].map(lambda s: len(s.split(",")) if s else 0))
    assert scores["n_flags"].drop(planted).mean() < 1


def test_scorer_refuses_spaces_it_was_not_fitted_on() -> None:
    X, _ = _blobs()
    ids = _ids("train", len(X))
    scorer = NoveltyScorer(k=3, progress=False).fit(embeddings={"cnn": pd.DataFrame(X, index=ids)})
    with pytest.raises(ValueError, match="'ae'"):
        scorer.score_samples(embeddings={"ae": pd.DataFrame(X, index=ids)})


def test_train_percentiles_are_mid_ranks_against_training_and_keep_order_beyond_it() -> None:
    scorer = NoveltyScorer(progress=False).fit(recon=pd.Series([1.0, 2.0, 3.0, 4.0], index=_ids("train", 4)))
    scores = scorer.score_samples(recon=pd.Series([-3.0, -1.0, 2.0, 4.0, 9.0, 30.0], index=_ids("core", 6)))
    rank = scores["combined_rank"].to_numpy()
    assert rank[2] == 0.375 and rank[3] == 0.875  # mid-ranks within the training range
    assert 0 < rank[0] < rank[1] < 1 / 8 and 0.875 < rank[4] < rank[5] < 1  # beyond it: the last half-rank, in order
    assert scores["flagged_by"].tolist() == ["", "", "", "", "", "recon"]
    between = scorer.score_samples(recon=pd.Series([2.2, 2.8], index=_ids("core", 2)))["combined_rank"]
    assert 0.375 < between.iloc[0] < between.iloc[1] < 0.625  # no plateau between two training scores


def test_auroc_is_one_when_separated_and_half_when_random() -> None:
    ids = _ids("p", 400)
    novel = pd.Series(np.arange(400) < 100, index=ids)
    rng = np.random.default_rng(0)
    perfect = novel.astype(float) + rng.uniform(0, 0.5, 400)
    scores = pd.DataFrame({"perfect": perfect, "random": rng.uniform(size=400)}, index=ids)
    metrics = novelty_metrics(scores, novel, ks=(50,))
    assert metrics.loc["perfect", "auroc"] == 1.0
    assert metrics.loc["perfect", "fpr95"] == 0.0
    assert abs(metrics.loc["random", "auroc"] - 0.5) < 0.1


def test_fpr_at_95_tpr_on_hand_example() -> None:
    # 20 novel: 18 far above every known, then 5.0 and 0.5; known at 0.25, 1.25, ..., 9.25.
    novel_scores = np.concatenate([np.arange(20.0, 38.0), [5.0, 0.5]])
    known_scores = np.arange(10) + 0.25
    truth = np.r_[np.ones(20, bool), np.zeros(10, bool)]
    # 95 % TPR = 19 of 20 novel: threshold 5.0, which also passes the five known at 5.25 ... 9.25
    assert fpr_at_tpr(truth, np.r_[novel_scores, known_scores]) == 0.5


def test_recall_at_k_on_hand_example() -> None:
    ids = _ids("p", 5)
    scores = pd.DataFrame({"s": [0.9, 0.8, 0.7, 0.6, 0.5]}, index=ids)
    novel = pd.Series([True, False, True, False, True], index=ids)
    metrics = novelty_metrics(scores, novel, ks=(1, 2, 3))
    assert metrics.loc["s", "recall@1"] == pytest.approx(1 / 3)
    assert metrics.loc["s", "recall@2"] == pytest.approx(1 / 3)
    assert metrics.loc["s", "recall@3"] == pytest.approx(2 / 3)
    assert metrics.loc["s", "recall@2n"] == 1.0


def test_loco_table_has_one_row_per_heldout_class_and_a_mean() -> None:
    ids = _ids("p", 6)
    novel = pd.Series([True, True, False, False, False, False], index=ids)
    good = pd.DataFrame({"s": [6.0, 5, 4, 3, 2, 1], "t": [1.0, 2, 3, 4, 5, 6]}, index=ids)
    table = loco_novelty_table({"dust": (good, novel), "grim": (good[["t", "s"]], novel)}, ks=(2,), progress=False)
    assert list(table.index) == ["dust", "grim", "mean"]
    assert table.loc["mean", ("s", "auroc")] == 1.0
    assert table.loc["dust", ("t", "recall@2")] == 0.0
    assert set(table.columns.get_level_values("metric")) == {"auroc", "fpr95", "recall@2", "recall@2n"}


def test_unknown_threshold_catches_target_fraction_of_heldout() -> None:
    heldout = np.linspace(0.5, 1.0, 20)
    known = np.linspace(0.0, 0.8, 100)
    cut = unknown_threshold(heldout, known, target_tpr=0.9)
    assert cut.threshold == pytest.approx(heldout[2])
    assert cut.tpr == pytest.approx(0.9)
    assert cut.fpr == pytest.approx((known >= heldout[2]).mean())
    assert float(cut) == cut.threshold


def test_flag_fraction_by_group_counts_per_sample() -> None:
    ids = _ids("core", 5)
    flags = pd.Series([True, False, True, True, False], index=ids)
    groups = pd.Series(["s1", "s1", "s2", "s2", "s2"], index=ids, name="sample_id")
    table = flag_fraction_by_group(flags, groups)
    assert table.loc["s1"].tolist() == [2, 1, 0.5]
    assert table.loc["s2", "fraction"] == pytest.approx(2 / 3)


def test_feature_drift_finds_the_shifted_feature_only() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"Width": rng.normal(10, 1, 500), "Length": rng.normal(20, 2, 500)})
    core = pd.DataFrame({"Width": rng.normal(11.5, 1, 400), "Length": rng.normal(20, 2, 400)})
    drift = feature_drift(train, core, ["Width", "Length"])
    assert drift.index[0] == "Width"
    width = drift.loc["Width"]
    assert width["psi"] > 0.25 and width["smd"] > 1.0 and width["ks_pvalue"] < 1e-6
    assert drift.loc["Length", "psi"] < 0.1 and abs(drift.loc["Length", "smd"]) < 0.2
    with pytest.raises(KeyError, match="core table lacks column.*Width"):
        feature_drift(train, core.drop(columns="Width"), ["Width"])


def test_traffic_light_levels_and_per_sample_summary() -> None:
    ids = _ids("core", 4)
    lights = traffic_light(pd.Series([10.0, 960.0, 995.0, 2000.0], index=ids), np.arange(1001.0))
    assert lights.tolist() == ["green", "amber", "red", "red"]
    summary = traffic_light_by_group(lights, pd.Series(["s1", "s2", "s2", "s1"], index=ids, name="sample_id"))
    assert summary.loc["s1", ["n", "green", "amber", "red"]].tolist() == [2, 0.5, 0.0, 0.5]
    assert summary.loc["s2", "amber"] == 0.5


def _crowd_and_strays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Training (two classes), and a core: known particles, a tight crowd of a new type, scattered strays.

    The crowd sits closer to training than the strays do: pointwise distance ranks the strays first, a
    score for a new *class* must rank the crowd first.
    """
    rng = np.random.default_rng(seed)
    X_train, y_train = _blobs(seed, n=100)
    known, _ = _blobs(seed + 1, n=100)
    crowd = rng.normal(0, 0.15, (30, X_train.shape[1])) + np.array([2.0, -2.0, 2.0, -2.0, 2.0, -2.0])
    strays = rng.normal(0, 1, (30, X_train.shape[1])) * 6 + 2
    return X_train, y_train, np.vstack([known, crowd, strays]), np.repeat([0, 1, 2], [200, 30, 30])


def test_core_excess_ranks_a_crowd_above_scattered_strays_and_pointwise_distance_does_not() -> None:
    X_train, y_train, X_core, kind = _crowd_and_strays()
    excess = CoreExcess(k=5, progress=False).fit(X_train, y_train).score_samples(X_core)
    knn = KNNDistance(k=5, progress=False).fit(X_train).score_samples(X_core)
    assert set(np.argsort(-excess)[:30]) == set(np.flatnonzero(kind == 1))
    assert np.median(knn[kind == 2]) > np.median(knn[kind == 1])  # the strays are farther, pointwise
    assert np.median(excess[kind == 0]) == pytest.approx(0.0, abs=0.1)


def test_core_excess_counts_a_crowd_across_sessions_so_a_crowd_one_session_made_falls_back() -> None:
    X_train, y_train = _blobs(0, n=200)
    rng = np.random.default_rng(3)
    known, _ = _blobs(4, n=300)
    dim = X_train.shape[1]
    new_type = rng.normal(0, 0.2, (45, dim)) + 2.5  # recurs in every session
    artefact = rng.normal(0, 0.2, (45, dim)) - 2.5  # a crowd only session s1 shows (its light made it)
    core = np.vstack([known, new_type, artefact])
    kind = np.repeat([0, 1, 2], [600, 45, 45])
    sessions = np.concatenate([np.resize(["s1", "s2", "s3"], 600), np.resize(["s1", "s2", "s3"], 45),
                               np.full(45, "s1")])
    detector = CoreExcess(k=5, progress=False).fit(X_train, y_train)
    within = detector.score_samples(core)
    across = detector.score_samples(core, sessions=sessions)
    assert np.median(within[kind == 2]) > np.median(within[kind == 1])  # within the set, the artefact looks newest
    assert set(np.argsort(-across)[:45]) == set(np.flatnonzero(kind == 1))
    assert np.median(across[kind == 2]) < np.median(across[kind == 0]) + 0.5
    one = detector.score_samples(core, sessions=np.full(len(core), "only"))  # one session: neighbours from the set
    np.testing.assert_allclose(one, within)
    with pytest.raises(ValueError, match="sessions must have one entry per point"):
        detector.score_samples(core, sessions=sessions[:10])


def test_core_excess_measures_every_session_at_the_same_share_of_its_set_so_session_size_makes_no_crowd() -> None:
    X_train, y_train = _blobs(0, n=300)
    core, _ = _blobs(6, n=600)  # known particles only, the lab's classes in the lab's proportions
    sessions = np.resize(np.repeat(["big", "small1", "small2"], [8, 1, 1]), len(core))  # 960 / 120 / 120 particles
    scores = CoreExcess(k=10, progress=False).fit(X_train, y_train).score_samples(core, y_train.repeat(2), sessions)
    medians = pd.Series(scores).groupby(sessions).median()
    assert medians.max() - medians.min() < 0.1, medians.round(3).to_dict()
    assert np.quantile(scores, 0.99) < 1.0  # nothing in this core is in excess


def test_core_excess_caps_the_distance_to_training_so_far_scattered_strays_do_not_outrank_a_crowd() -> None:
    X_train, y_train = _blobs(0, n=200)
    rng = np.random.default_rng(8)
    known, _ = _blobs(2, n=200)
    dim = X_train.shape[1]
    crowd = rng.normal(0, 0.3, (30, dim)) - 4.0
    strays = rng.normal(0, 20, (30, dim)) + 1000.0  # far beyond the lab's reach, and nowhere near each other
    core, kind = np.vstack([known, crowd, strays]), np.repeat([0, 1, 2], [400, 30, 30])
    capped = CoreExcess(k=5, progress=False).fit(X_train, y_train)
    uncapped = CoreExcess(k=5, reach=None, progress=False).fit(X_train, y_train)
    assert np.median(uncapped.score_samples(core)[kind == 2]) > np.median(uncapped.score_samples(core)[kind == 1])
    assert set(np.argsort(-capped.score_samples(core))[:30]) == set(np.flatnonzero(kind == 1))
    assert np.isfinite(capped.reach_) and uncapped.reach_ == np.inf
    with pytest.raises(ValueError, match="reach must lie in"):
        CoreExcess(reach=1.5).fit(X_train, y_train)


def test_core_excess_null_is_centred_and_groups_remove_a_class_prior_shift() -> None:
    X_train, y_train = _blobs(0, n=200)
    detector = CoreExcess(k=5, progress=False).fit(X_train, y_train)
    assert abs(np.median(detector.train_scores_)) < 0.05
    # a core of class a only, ten times denser than class a in training: every particle looks "in excess"
    # unless it is centred within its (predicted) group, when nothing stands out
    core = np.random.default_rng(5).normal(0, 1, (2000, X_train.shape[1]))
    raw = detector.score_samples(np.vstack([core, X_train[y_train == "b"]]))
    centred = detector.score_samples(np.vstack([core, X_train[y_train == "b"]]), np.repeat(["a", "b"], [2000, 200]))
    assert np.median(raw[:2000]) > np.median(raw[2000:]) + 0.2
    assert abs(np.median(centred[:2000])) < 1e-6 and abs(np.median(centred[2000:])) < 1e-6
    with pytest.raises(ValueError, match="more than k=5"):
        detector.score_samples(core[:5])
    with pytest.raises(ValueError, match="one entry per point"):
        detector.score_samples(core, np.zeros(3))


def test_scorer_adds_the_excess_score_and_combines_only_the_named_scores() -> None:
    X_train, y_train, X_core, kind = _crowd_and_strays()
    train_ids, core_ids = _ids("train", len(X_train)), _ids("core", len(X_core))
    inputs = _inputs(X_train, train_ids, 0)
    scorer = NoveltyScorer(k=5, progress=False).fit(**inputs, labels=pd.Series(y_train, index=train_ids))
    core_inputs = _inputs(X_core, core_ids, 1)
    everything = scorer.score_samples(**core_inputs)
    assert "excess_cnn" in everything and "excess_umap" not in everything  # maps get no group score
    scorer.combine = ["excess_cnn", "knn_cnn"]
    chosen = scorer.score_samples(**core_inputs)
    pct = scorer.percentiles(chosen[["excess_cnn", "knn_cnn"]])
    np.testing.assert_allclose(chosen["combined_rank"], pct.mean(axis=1))
    scorer.combine = ["excess_cnn"]
    assert set(scorer.score_samples(**core_inputs)["combined_rank"].nlargest(30).index) == set(core_ids[kind == 1])
    scorer.combine = ["excess_ae"]
    with pytest.raises(ValueError, match="excess_ae"):
        scorer.score_samples(**core_inputs)
    few = _inputs(X_core[:4], core_ids[:4], 1)
    scorer.combine = None
    assert "excess_cnn" not in scorer.score_samples(**few)  # too few particles to be their own reference


def test_class_conditional_shift_sees_the_instrument_not_the_class_prior() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 300)
    train = pd.DataFrame({"size": np.where(labels == "a", 0.0, 5.0) + rng.normal(0, 1, 600),
                          "gray": rng.normal(0, 1, 600)}, index=_ids("train", 600))
    # the core is 90% class b (a prior shift that moves "size" overall) and 1.5 SD darker in every class
    core_labels = np.repeat(["a", "b"], [60, 540])
    core = pd.DataFrame({"size": np.where(core_labels == "a", 0.0, 5.0) + rng.normal(0, 1, 600),
                         "gray": rng.normal(-1.5, 1, 600)}, index=_ids("core", 600))
    shift = class_conditional_shift(train, pd.Series(labels, index=train.index), core,
                                        pd.Series(core_labels, index=core.index))
    assert shift.loc["gray", "median_abs"] == pytest.approx(1.5, abs=0.25)
    assert shift.loc["size", "median_abs"] < 0.25
    assert feature_drift(train, core, ["size"]).loc["size", "smd"] > 0.5  # the plain drift mixes them
    with pytest.raises(ValueError, match="no class has 1000"):
        class_conditional_shift(train, pd.Series(labels, index=train.index), core,
                                    pd.Series(core_labels, index=core.index), min_count=1000)


def test_session_alignment_removes_each_sessions_offset_but_not_a_new_types() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b", "c"], 1000)
    centre = {"a": 0.0, "b": 5.0, "c": 10.0}
    train = pd.DataFrame({"size": [centre[c] for c in labels] + rng.normal(0, 1, 3000)}, index=_ids("train", 3000))
    # two core sessions 2 and -1 SD off the lab; 100 particles of a new type at size 20, mistaken for class c
    pred = np.tile(np.repeat(["a", "b", "c"], [500, 500, 600]), 2)
    new = np.tile(np.r_[np.zeros(1500, bool), np.ones(100, bool)], 2)
    sessions = np.repeat(["s1", "s2"], 1600)
    true_size = np.where(new, 20.0, [centre[c] for c in pred]) + rng.normal(0, 1, 3200)
    core = pd.DataFrame({"size": true_size + np.where(sessions == "s1", 2.0, -1.0)}, index=_ids("core", 3200))
    offsets = session_offsets(train, pd.Series(labels, index=train.index), core, pd.Series(pred, index=core.index),
                              pd.Series(sessions, index=core.index))
    assert offsets.loc["s1", "size"] == pytest.approx(2.0, abs=0.2)
    assert offsets.loc["s2", "size"] == pytest.approx(-1.0, abs=0.2)
    fixed = align_core(core, pd.Series(sessions, index=core.index), offsets)
    assert abs(fixed.loc[~new, "size"].mean() - true_size[~new].mean()) < 0.2
    assert fixed.loc[new, "size"].mean() == pytest.approx(20.0, abs=0.5)  # the new type keeps its place
    with pytest.raises(KeyError, match="no offset for session"):
        align_core(core, pd.Series("s3", index=core.index), offsets)


@pytest.mark.parametrize("detector", [KNNDistance(k=3, progress=False), ClassMahalanobis(progress=False),
                                      CoreExcess(k=3, progress=False), NoveltyScorer(k=3, progress=False)])
def test_detectors_follow_the_scikit_learn_contract(detector) -> None:
    copy = clone(detector)
    assert copy.get_params() == detector.get_params()
    with pytest.raises(NotFittedError):
        copy.score_samples(np.zeros((20, 2))) if not isinstance(copy, NoveltyScorer) else copy.score_samples(
            recon=pd.Series(np.zeros(20), index=_ids("core", 20)))


def test_bad_parameters_are_refused_at_fit_not_at_construction() -> None:
    knn = KNNDistance(k=3, aggregate="median", progress=False)
    with pytest.raises(ValueError, match="aggregate must be 'mean' or 'kth'"):
        knn.fit(np.zeros((10, 2)))
    scorer = NoveltyScorer(quantile=1.5, progress=False)
    with pytest.raises(ValueError, match=r"quantile must lie in \(0, 1\)"):
        scorer.fit(recon=pd.Series(np.arange(10.0), index=_ids("train", 10)))
