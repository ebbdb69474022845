"""Notebook 05: novelty scores for the core, measured first on the leave-one-class-out folds.

Scores come from what notebooks 02-04 wrote (classifier logits, autoencoder loss and latent, CNN embedding,
UMAP map) and from the acquisition-robust metadata; the detectors are fitted on the training split only, so
scoring new particles needs no refit. The combined rank averages the percentile ranks of the scores chosen on
the folds among those the lab -> core shift leaves stable (the folds have no UMAP map: the UMAP-space
outlierness ``knn_umap`` is reported beside it, as its own score). An "unknown" threshold calibrated on the
folds, the composition with the unknowns set aside, galleries, discovery cards and the explorer follow.

Without a core part the folds still run on the labelled data (the held-out class's test particles against the
other classes' test particles, detectors fitted without it) and the scores are chosen on them alone (there is no
lab -> core shift to measure); every step on the core is a Skipped line. Without folds (no class could be held
out) the combined rank averages every stable score and there is no "unknown" threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import DiscoveryConfig
from ..data.dataset import DatasetBundle
from ..novelty.detectors import KNNDistance
from ..novelty.metrics import (
    UnknownThreshold,
    flag_fraction_by_group,
    loco_novelty_table,
    novelty_metrics,
    traffic_light,
    traffic_light_by_group,
    unknown_threshold,
)
from ..novelty.scorer import EXCESS, NoveltyScorer
from ..picklist import ash_classes, volcanic_layers
from ..plots.classify import plot_composition, stratigraphic_diagram
from ..plots.gallery import (
    confused_gallery,
    discovery_card,
    group_gallery,
    novelty_heatmap,
    top_k_gallery,
    traffic_light_bars,
)
from ..quantify import bootstrap_composition, composition_error
from ..run.artifacts import Run
from ..run.card import update_model_card
from ..run.notebook import Skipped, Stage, step
from ..run.review import CANDIDATE, load_review, review_to_labels
from ..schema import DEPTH, LABEL, NEW_CLASS, SAMPLE, SESSION, SPLIT
from ..train.autoencoder import LATENT_PREFIX, RECON, AEOutputs
from ..train.classifier import ClassifierOutputs
from ..widgets import Explorer
from .cnn import pick_sheet, table_proba, train_priors, write_pick_list
from .loco import holdouts_in_run, load_fold
from .maps import load_map
from .spaces import Space, aligned_core, core_model_name, core_predictions, core_sessions

UMAP_SCORE = "knn_umap"
# What the core table holds beside the scores: notebook 02's prediction, notebook 04's cluster, the unknown flag.
CONTEXT_COLUMNS = ("pred", "max_prob", "unassigned", "cluster", "unknown")


@dataclass(frozen=True)
class ScorerInputs:
    """Everything a novelty score reads, for one set of particles (keyed by particle id)."""

    logits: pd.DataFrame
    recon: pd.Series
    embeddings: dict[str, pd.DataFrame] = field(default_factory=dict)
    sessions: pd.Series | None = None  # a core's instrument sessions: its crowds are counted across them

    def rows(self, ids: pd.Index) -> ScorerInputs:
        """The same inputs restricted to some particles."""
        return ScorerInputs(self.logits.loc[ids], self.recon.loc[ids], {k: v.loc[ids] for k, v in self.embeddings.items()},
                            None if self.sessions is None else self.sessions.loc[ids])


def _inputs(cnn: ClassifierOutputs, ae: AEOutputs, meta: Space, part: str) -> ScorerInputs:
    """Scorer inputs of the labelled part or the core from one CNN, one autoencoder and the metadata."""
    logits = cnn.labelled_logits if part == "labelled" else cnn.core_logits
    emb = cnn.labelled_embedding if part == "labelled" else cnn.core_embedding
    ae_table = ae.labelled if part == "labelled" else ae.core
    return ScorerInputs(logits, ae_table[RECON],
                        {"cnn": emb, "ae": ae_table.filter(like=LATENT_PREFIX),
                         "meta": meta.labelled if part == "labelled" else meta.core})


def run_inputs(run: Run, bundle: DatasetBundle, cfg: DiscoveryConfig, meta: Space) -> dict[str, ScorerInputs]:
    """Scorer inputs of the labelled part and (when there is one) the core from the run's notebook 02-03 models
    and a metadata space; with ``align_sessions`` the core's logits, loss and embeddings are aligned to the lab
    session by session (the metadata space comes aligned), with ``excess_across_sessions`` the core carries its
    sessions for the group scores."""
    cnn = ClassifierOutputs.load(run, core_model_name(run))
    ae = AEOutputs.load(run, cfg.ae_latent)
    inputs = {"labelled": _inputs(cnn, ae, meta, "labelled")}
    if bundle.core is not None:
        inputs["core"] = core_inputs(inputs["labelled"], _inputs(cnn, ae, meta, "core"), bundle.train.table,
                                     core_sessions(bundle), core_predictions(run)["pred"], cfg)
    return inputs


def core_inputs(labelled: ScorerInputs, core: ScorerInputs, reference: pd.DataFrame, sessions: pd.Series,
                core_pred: pd.Series, cfg: DiscoveryConfig) -> ScorerInputs:
    """A core's scorer inputs as notebook 05 scores them: aligned session by session (``align_sessions``; the
    metadata space comes aligned) and carrying its sessions for the group scores (``excess_across_sessions``)."""
    if cfg.align_sessions:
        core = session_aligned_inputs(labelled, core, reference, sessions, core_pred)
    return replace(core, sessions=sessions if cfg.excess_across_sessions else None)


def session_aligned_inputs(labelled: ScorerInputs, core: ScorerInputs, reference: pd.DataFrame, sessions: pd.Series,
                           core_pred: pd.Series) -> ScorerInputs:
    """The core's logits, reconstruction loss and CNN / AE embeddings aligned to the lab session by session."""
    def align(lab: pd.DataFrame, part: pd.DataFrame) -> pd.DataFrame:
        return aligned_core(lab, part, reference, sessions, core_pred)

    recon = align(labelled.recon.to_frame(), core.recon.to_frame())[core.recon.name]
    embeddings = {name: part if name == "meta" else align(labelled.embeddings[name], part)
                  for name, part in core.embeddings.items()}
    return ScorerInputs(align(labelled.logits, core.logits), recon, embeddings)


def fit_scorer(inputs: ScorerInputs, table: pd.DataFrame, cfg: DiscoveryConfig, exclude: tuple[str, ...] = (),
               combine: list[str] | None = None, progress: bool = True) -> NoveltyScorer:
    """Fit every detector on the training split (minus excluded classes), with labels for Mahalanobis."""
    train = table.index[(table[SPLIT] == "train") & ~table[LABEL].isin(exclude)]
    fitted = inputs.rows(train)
    return NoveltyScorer(k=cfg.k_neighbors, quantile=cfg.flag_quantile, combine=combine,
                                 progress=progress).fit(fitted.logits, fitted.recon, fitted.embeddings,
                                                        labels=table.loc[train, LABEL])


def score(scorer: NoveltyScorer, inputs: ScorerInputs) -> pd.DataFrame:
    """Novelty scores (higher = more novel), combined rank and the flagging scores of some particles."""
    return scorer.score_samples(inputs.logits, inputs.recon, inputs.embeddings, sessions=inputs.sessions)


def umap_outlierness(run: Run, table: pd.DataFrame, k: int) -> pd.Series:
    """kNN distance of each core particle to the training split on notebook 04's UMAP map (the study's third way)."""
    train_map = load_map(run, "labelled").loc[table.index[table[SPLIT] == "train"]]
    core_map = load_map(run, "core")
    detector = KNNDistance(k).fit(train_map.to_numpy())
    return pd.Series(detector.score_samples(core_map.to_numpy()), index=core_map.index, name=UMAP_SCORE)


@dataclass(frozen=True)
class HoldoutScores:
    """Scores of one leave-one-class-out fold: test particles of known classes and every held-out particle."""

    holdout: str
    scores: pd.DataFrame
    is_novel: pd.Series
    percentiles: pd.DataFrame  # each score's percentile rank against the fold's training reference

    def recombined(self, names: list[str]) -> HoldoutScores:
        """The same fold with its combined rank averaged over ``names`` only."""
        scores = self.scores.assign(combined_rank=self.percentiles[names].mean(axis=1))
        return HoldoutScores(self.holdout, scores, self.is_novel, self.percentiles)


def holdout_scores(run: Run, bundle: DatasetBundle, cfg: DiscoveryConfig, holdout: str,
                   meta: Space, progress: bool = True) -> HoldoutScores:
    """Score one fold with detectors fitted on the models of notebook 04 that never saw the held-out class.

    The query is the test split, all classes: the held-out class keeps its natural share there, so recall in
    the top k means what it would mean on a core where the new class is a minority.
    """
    table = bundle.train.table
    fold = load_fold(run, holdout, cfg.ae_latent)
    inputs = _inputs(fold.cnn, fold.ae, meta, "labelled")
    scorer = fit_scorer(inputs, table, cfg, exclude=(holdout,), progress=progress)
    query = table.index[table[SPLIT] == "test"]
    scores = score(scorer, inputs.rows(query))
    return HoldoutScores(holdout, scores, (table.loc[query, LABEL] == holdout).rename("is_novel"),
                         scorer.percentiles(scores[scorer.score_names_]))


def score_shift(scorer: NoveltyScorer, inputs: dict[str, ScorerInputs], table: pd.DataFrame) -> pd.Series:
    """How far the lab -> core acquisition shift moves each score, label-free, in percentile points.

    Per predicted class: median percentile of the core particles minus that of the lab's test particles;
    the median over classes summarises (a new type hiding in one class cannot move it). A score that moves
    here responds to the instrument session, and would fill the top of a core ranking with it.
    """
    test = table.index[table[SPLIT] == "test"]
    parts = {"core": inputs["core"], "test": inputs["labelled"].rows(test)}
    medians = {}
    for name, part in parts.items():
        pct = scorer.percentiles(score(scorer, part)[scorer.score_names_])
        medians[name] = pct.groupby(part.logits.to_numpy().argmax(axis=1)).median()
    return (medians["core"] - medians["test"]).median(axis=0).rename("acquisition_shift")


def choose_scores(loco_novelty: pd.DataFrame | None, shift: pd.Series, margin: float, max_shift: float) -> pd.DataFrame:
    """Which scores the combined rank averages: stable under the acquisition shift, and near the best on LOCO.

    The leave-one-class-out folds have no acquisition shift (held-out classes come from lab sessions), so they
    rank scores by how well they separate a new class but cannot see how a score reacts to the core's sessions;
    ``score_shift`` can. Kept: ``|shift| <= max_shift``, a mean LOCO AUROC within ``margin`` of the best stable
    score's, and a worst-fold AUROC within ``margin`` of the best worst fold: a score that misses one kind of
    held-out class dilutes the average exactly where a new class is of that kind (on the demo core, Mahalanobis
    in the metadata space: near the best on average, blind to the held-out pollen and to the planted diatoms).
    The folds choose, so their own combined-rank row is optimistic; the core is the independent check.

    A shift of NaN (no core to measure it on) rules no score out; without folds (``loco_novelty`` None) every
    stable score is kept, and ``shift`` names the scores.
    """
    if loco_novelty is not None:
        per_fold = loco_novelty.xs("auroc", axis=1, level="metric").drop(columns="combined_rank", errors="ignore")
        auroc, worst = per_fold.loc["mean"], per_fold.drop(index="mean").min()
    else:
        auroc = worst = pd.Series(np.nan, index=shift.index)
    table = pd.DataFrame({"loco_auroc": auroc, "loco_worst_auroc": worst,
                          "acquisition_shift": shift.reindex(auroc.index)})
    table["stable"] = ~(table["acquisition_shift"].abs() > max_shift)
    if not table["stable"].any():
        raise ValueError(f"every score shifts by more than {max_shift} between lab and core: raise max_score_shift")
    stable = table[table["stable"]]
    near_best = ((table["loco_auroc"] >= stable["loco_auroc"].max() - margin)
                 & (table["loco_worst_auroc"] >= stable["loco_worst_auroc"].max() - margin)
                 if loco_novelty is not None else True)
    table["chosen"] = table["stable"] & near_best
    if not table["chosen"].any():
        table.loc[stable["loco_auroc"].idxmax(), "chosen"] = True
    return table.sort_values("loco_auroc", ascending=False).rename_axis("score")


def pooled_threshold(folds: list[HoldoutScores], target_tpr: float) -> UnknownThreshold:
    """An "unknown" threshold on the combined rank that catches ``target_tpr`` of held-out particles, all folds pooled."""
    ranks = pd.concat([f.scores["combined_rank"] for f in folds])
    novel = pd.concat([f.is_novel for f in folds]).to_numpy()
    return unknown_threshold(ranks[novel].to_numpy(), ranks[~novel].to_numpy(), target_tpr)


def new_class_metrics(scores: pd.DataFrame, truth: pd.Series | None, ks: tuple[int, ...]) -> pd.DataFrame | None:
    """AUROC, FPR95 and recall in the top k of every score for the planted new class (None without truth)."""
    if truth is None:
        return None
    is_new = (truth.reindex(scores.index) == NEW_CLASS).rename("is_novel")
    if not is_new.any():
        return None
    return novelty_metrics(scores, is_new, ks).sort_values("auroc", ascending=False)


def flag_fraction_by_sample(unknown: pd.Series, core: pd.DataFrame) -> pd.DataFrame:
    """Fraction of particles flagged unknown per sample, with its depth (shallowest first) where the core has depths."""
    if DEPTH not in core:
        return flag_fraction_by_group(unknown, core[SAMPLE])
    groups = core[[SAMPLE, DEPTH]].groupby(SAMPLE)[DEPTH].transform("median").round(3)
    return flag_fraction_by_group(unknown, pd.DataFrame({SAMPLE: core[SAMPLE], DEPTH: groups}))


def candidate_clusters(scored: pd.DataFrame, summary: pd.DataFrame, min_size: int = 5) -> list[int]:
    """Core clusters worth a discovery card: flagged ones (far from training, or a crowd it lacks) first, then by mean combined rank."""
    ranks = scored[scored["cluster"] >= 0].groupby("cluster")["combined_rank"].agg(["mean", "size"])
    ranks = ranks[ranks["size"] >= min_size].join(summary["flagged"])
    ranks = ranks.sort_values(["flagged", "mean"], ascending=False)
    return [int(c) for c in ranks.index[:3]]


def nearest_class_rows(summary: pd.DataFrame, cluster: int, table: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The training particles of the class nearest to a cluster (the discovery card's reference)."""
    nearest = str(summary.loc[cluster, "nearest_class"])
    return nearest, table[(table[SPLIT] == "train") & (table[LABEL] == nearest)]


def open_set_compositions(core_pred: pd.DataFrame, unknown: pd.Series, table: pd.DataFrame, *, n_boot: int,
                          seed: int) -> dict[str, pd.DataFrame]:
    """The core's composition by classify-and-count and EM over every particle (notebook 02's) and with the
    particles flagged unknown set aside, each with bootstrap intervals.

    A closed-set classifier counts a class it was never shown as the known class it most resembles; no prior
    correction can undo that, setting the flagged particles aside can. ``core_pred``: notebook 02's table
    (calibrated ``p_<class>`` columns).
    """
    proba = table_proba(core_pred)
    kept = ~unknown.reindex(proba.index).fillna(False).astype(bool)
    if not kept.any():
        raise ValueError("every core particle is flagged unknown: there is no known-class composition to estimate")
    priors = train_priors(list(proba.columns), table)
    parts = {"all particles": proba, "unknowns set aside": proba[kept]}
    return {f"{method.upper()}, {name}": bootstrap_composition(part, method, n_boot=n_boot, seed=seed,
                                                                        train_priors=priors)
            for name, part in parts.items() for method in ("cc", "em")}


def summary_metrics(new_class: pd.DataFrame | None, loco_novelty: pd.DataFrame | None, combined: list[str],
                    threshold: UnknownThreshold | None, flagged_fraction: float | None,
                    composition_errors: pd.DataFrame | None = None, shift: ShiftCheck | None = None) -> dict:
    """Notebook 05's numbers for metrics.json (None: a step that was skipped, left out)."""
    metrics: dict = {} if loco_novelty is None else {
        "loco_mean": loco_novelty.loc["mean"].unstack().to_dict(orient="index")}
    metrics["combined_rank_scores"] = combined
    if threshold is not None:
        metrics["unknown_threshold"] = {"combined_rank": threshold.threshold, "tpr": threshold.tpr, "fpr": threshold.fpr}
    if flagged_fraction is not None:
        metrics["core_flagged_unknown_fraction"] = flagged_fraction
    if new_class is not None:
        metrics["new_class"] = new_class.to_dict(orient="index")
        metrics["best_score_auroc"] = str(new_class.index[0])
    if composition_errors is not None:
        metrics["composition_mae"] = composition_errors.filter(like="_abs_error").mean().to_dict()
    if shift is not None:
        metrics["shift_check"] = shift.metrics()
    return metrics



CORE = {"core": True, "to": "score the core"}


def score_folds(stage: Stage, meta: Space) -> list[HoldoutScores] | Skipped:
    """Every leave-one-class-out fold notebook 04 trained, scored by detectors that never saw its class."""
    holdouts = holdouts_in_run(stage.run)
    if not holdouts:
        return Skipped("scoring the leave-one-class-out folds", "notebook 04 held no class out (its "
                       "leave-one-class-out section says why)")
    return [holdout_scores(stage.run, stage.bundle, stage.cfg, holdout, meta) for holdout in holdouts]


@step("the leave-one-class-out table")
def fold_table(stage: Stage, folds: list[HoldoutScores]) -> pd.DataFrame:
    """Each score's AUROC, FPR95 and recall@k per held-out class, and their mean."""
    return loco_novelty_table({f.holdout: (f.scores, f.is_novel) for f in folds}, ks=stage.cfg.top_k)


@step("the leave-one-class-out AUROCs")
def fold_aurocs(stage: Stage, folds: list[HoldoutScores]) -> pd.DataFrame:
    """Each score's AUROC per held-out class, and their mean."""
    return fold_table(stage, folds).xs("auroc", axis=1, level="metric").round(3)


@dataclass(frozen=True)
class Combination:
    """The scorer fitted on the training split and which scores its combined rank averages (with why)."""

    scorer: NoveltyScorer
    choice: pd.DataFrame

    @property
    def combined(self) -> list[str]:
        """The chosen scores."""
        return list(self.choice.index[self.choice["chosen"]])


def choose_combination(stage: Stage, inputs: dict[str, ScorerInputs], loco: pd.DataFrame | Skipped) -> Combination:
    """Fit every detector on the training split; keep the shift-stable scores near the best on the folds.

    Without a core the shift is not measured (every score counts as stable); without folds every stable score is kept.
    """
    scorer = fit_scorer(inputs["labelled"], stage.table, stage.cfg)
    if "core" in inputs:
        shift = score_shift(scorer, inputs, stage.table)
    else:
        shift = pd.Series(np.nan, index=scorer.score_names_, name="acquisition_shift")
        print("no core part: the lab -> core shift of the scores cannot be measured; they are chosen on the folds alone")
    folds = None if isinstance(loco, Skipped) else loco
    if folds is None:
        print(f"no leave-one-class-out folds ({loco.why}): the combined rank averages every stable score")
    choice = choose_scores(folds, shift, stage.cfg.combine_margin, stage.cfg.max_score_shift)
    print("combined rank averages:", list(choice.index[choice["chosen"]]))
    return Combination(scorer.set_params(combine=list(choice.index[choice["chosen"]])), choice)


@step("the recombined folds")
def recombined_folds(stage: Stage, folds: list[HoldoutScores], combination: Combination) -> list[HoldoutScores]:
    """The folds with their combined rank over the chosen scores only."""
    return [f.recombined(combination.combined) for f in folds]


@step("the leave-one-class-out heat map")
def fold_heatmap(stage: Stage, loco: pd.DataFrame, metric: str) -> Figure:
    """One metric (``auroc``, ``fpr95``) of every score per held-out class."""
    return novelty_heatmap(loco, metric=metric, path=stage.figure(f"05_loco_{metric}.png"))


@step("the core's novelty scores", **CORE)
def score_core(stage: Stage, combination: Combination, inputs: dict[str, ScorerInputs]) -> pd.DataFrame:
    """Every score of every core particle, with notebook 02's prediction and notebook 04's cluster beside it."""
    scores = score(combination.scorer, inputs["core"]).join(umap_outlierness(stage.run, stage.table, stage.cfg.k_neighbors))
    core_pred = core_predictions(stage.run)
    return scores.join(core_pred[["pred", "max_prob", "unassigned"]]).join(stage.run.read("core_clusters"))


@step("the most novel core particles", **CORE)
def most_novel(stage: Stage, core_view: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` core particles with the highest combined rank."""
    return core_view.sort_values("combined_rank", ascending=False).head(n).round(3)


@step("the new-class metrics", truth=True, to="measure how well each score finds a class planted in the core")
def new_class_report(stage: Stage, core_view: pd.DataFrame) -> pd.DataFrame | Skipped:
    """Where the truth is known: how well each score finds the planted new class (AUROC, recall@k)."""
    found = new_class_metrics(core_view.drop(columns=list(CONTEXT_COLUMNS), errors="ignore"), stage.bundle.truth,
                              stage.cfg.top_k)
    if found is None:
        return Skipped("the new-class metrics", f"the truth part has no {NEW_CLASS} particles (the planted new class)")
    print(f"best single score by AUROC: {found.index[0]} ({found['auroc'].iloc[0]:.3f}); "
          f"combined rank: AUROC {found.loc['combined_rank', 'auroc']:.3f}, "
          f"recall@2n {found.loc['combined_rank', 'recall@2n']:.2f}")
    return found


@step("the unknown threshold")
def calibrate_unknown(stage: Stage, folds: list[HoldoutScores]) -> UnknownThreshold:
    """The combined-rank threshold that catches ``target_tpr`` of the held-out particles, all folds pooled."""
    threshold = pooled_threshold(folds, stage.cfg.target_tpr)
    print(f"unknown if combined rank >= {threshold.threshold:.3f}: catches {threshold.tpr:.0%} of held-out particles, "
          f"flags {threshold.fpr:.0%} of known ones")
    return threshold


def flag_unknowns(core_view: pd.DataFrame | Skipped, threshold: UnknownThreshold | Skipped) -> pd.DataFrame | Skipped:
    """The core table with an ``unknown`` flag (combined rank above the folds' threshold); as it was without one."""
    if isinstance(core_view, Skipped) or isinstance(threshold, Skipped):
        return core_view
    flagged = core_view.assign(unknown=core_view["combined_rank"] >= threshold.threshold)
    print(f"{flagged['unknown'].mean():.1%} of the core is flagged unknown")
    return flagged


def session_rank_shift(core_rank: pd.Series, core_pred: np.ndarray, lab_rank: pd.Series, lab_pred: np.ndarray,
                       sessions: pd.Series, min_count: int = 10) -> pd.Series:
    """Per core session: the median over predicted classes of how far the core's median combined rank lies above
    the lab's test particles' of the same predicted class (a new type, a minority within a class, cannot move it);
    NaN for a session without a class of ``min_count`` particles."""
    lab = lab_rank.groupby(lab_pred).median()
    shifts = {}
    for session in pd.unique(sessions):
        member = (sessions.reindex(core_rank.index) == session).to_numpy()
        counts = pd.Series(core_pred[member]).value_counts()
        classes = [c for c in lab.index if counts.get(c, 0) >= min_count]
        medians = core_rank[member].groupby(core_pred[member]).median()
        shifts[session] = float((medians.reindex(classes) - lab.reindex(classes)).median()) if classes else np.nan
    return pd.Series(shifts, name="rank_shift").rename_axis(SESSION)


@dataclass(frozen=True)
class ShiftCheck:
    """Per core session: the known classes' combined-rank shift from the lab and the share flagged unknown."""

    sessions: pd.DataFrame
    max_shift: float

    @property
    def trusted(self) -> bool:
        """Whether no session moves the known classes' combined rank by more than ``max_shift``."""
        return bool((self.sessions["rank_shift"].abs() <= self.max_shift).all())

    def _repr_html_(self) -> str:
        """The per-session table, as a notebook shows it."""
        return self.sessions._repr_html_()

    def metrics(self) -> dict:
        """The check for metrics.json."""
        return {"trusted": self.trusted, "max_abs_rank_shift": float(self.sessions["rank_shift"].abs().max()),
                "limit": self.max_shift, "per_session": self.sessions.to_dict(orient="index")}


def drift_scores(combined: list[str]) -> list[str]:
    """The scores whose lab -> core drift tells whether the combined rank can be trusted: each pointwise score
    itself, and for a group score (``excess_<space>``, centred on the core itself, so it cannot show a drift) the
    distance to training in its space (``knn_<space>``)."""
    return list(dict.fromkeys(f"knn_{name.removeprefix(EXCESS)}" if name.startswith(EXCESS) else name
                              for name in combined))


@step("the shift check", **CORE)
def shift_check(stage: Stage, combination: Combination, inputs: dict[str, ScorerInputs],
                core_view: pd.DataFrame) -> ShiftCheck:
    """Whether the core's ranking compares particles or sessions, from the data: per session, how far the lab ->
    core shift moves the known classes' percentile in the combined rank's scores (``drift_scores``), beside the share
    flagged unknown."""
    test = stage.table.index[stage.table[SPLIT] == "test"]
    lab = inputs["labelled"].rows(test)
    names = drift_scores(combination.combined)
    scorer = combination.scorer
    lab_rank = scorer.percentiles(score(scorer, lab)[names]).mean(axis=1)
    core_rank = scorer.percentiles(core_view[names]).mean(axis=1)
    core = inputs["core"].rows(core_view.index)
    sessions = core_sessions(stage.bundle).reindex(core_view.index)
    print(f"drift measured in {', '.join(names)} (the combined rank averages {', '.join(combination.combined)})")
    shift = session_rank_shift(core_rank, core.logits.to_numpy().argmax(axis=1), lab_rank,
                               lab.logits.to_numpy().argmax(axis=1), sessions)
    table = shift.to_frame()
    if "unknown" in core_view:
        table = flag_fraction_by_group(core_view["unknown"], sessions).join(shift)
    check = ShiftCheck(table.round(4), stage.cfg.max_session_drift)
    moved = table.index[table["rank_shift"].abs() > check.max_shift]
    if check.trusted:
        print(f"the ranking compares particles: in every session the known classes' drift lies within "
              f"{check.max_shift:.2f} of the lab's (largest {table['rank_shift'].abs().max():.3f})")
    else:
        print(f"DO NOT TRUST THE RANKING: in session(s) {', '.join(map(str, moved))} the known classes' drift "
              f"lies {', '.join(f'{v:+.3f}' for v in table.loc[moved, 'rank_shift'])} from the lab's (limit "
              f"{check.max_shift:.2f}): the top of the ranking may be the shift of these sessions, not new particles. "
              f"{'' if stage.cfg.align_sessions else 'Align the sessions (align_sessions=true), '}Add labelled "
              "particles imaged in these sessions, or read the flagged share as a drift warning")
    return check


@step("the unknowns per sample", core_columns=(SAMPLE,), to="see where in the core the unknowns are")
def flagged_by_sample(stage: Stage, core_view: pd.DataFrame, threshold: UnknownThreshold) -> pd.DataFrame:
    """Fraction of particles flagged unknown per sample, with its depth where known."""
    return flag_fraction_by_sample(core_view["unknown"], stage.bundle.core.table)


@dataclass(frozen=True)
class OpenSet:
    """The core's composition over every particle and with the unknowns set aside; errors where truth is known."""

    compositions: dict[str, pd.DataFrame]
    errors: pd.DataFrame | None
    flagged_fraction: float


@step("the open-set composition", core=True, to="estimate the core's composition with the unknowns set aside")
def open_set(stage: Stage, core_view: pd.DataFrame, threshold: UnknownThreshold) -> OpenSet:
    """CC and EM with and without the particles flagged unknown, scored against the truth file when there is one."""
    compositions = open_set_compositions(core_predictions(stage.run), core_view["unknown"], stage.table,
                                         n_boot=stage.cfg.bootstrap, seed=stage.cfg.seed)
    truth = stage.bundle.truth.reindex(core_view.index) if stage.bundle.truth is not None else None
    errors = (composition_error({m: c["fraction"] for m, c in compositions.items()}, truth)
              if truth is not None else None)
    return OpenSet(compositions, errors, float(core_view["unknown"].mean()))


@step("the open-set composition figure")
def open_set_figure(stage: Stage, result: OpenSet) -> Figure:
    """Each estimate with its interval, below it the error against the truth when known."""
    return plot_composition(result.compositions, truth=result.errors["truth"] if result.errors is not None else None,
                            path=stage.figure("05_core_composition_open_set.png"),
                            title=f"Core composition; {result.flagged_fraction:.1%} of the core flagged unknown")


@step("the open-set composition table")
def open_set_table(stage: Stage, result: OpenSet) -> pd.DataFrame:
    """Per class: each method's absolute error (and their mean) where the truth is known, else the estimates."""
    if result.errors is None:
        return pd.concat({m: c["fraction"] for m, c in result.compositions.items()}, axis=1).round(4)
    errors = result.errors.filter(like="_abs_error").rename(columns=lambda c: c.removesuffix("_abs_error"))
    return pd.concat([errors, errors.mean().to_frame("mean").T]).round(4)


@step("the galleries of the most novel core particles", **CORE)
def top_galleries(stage: Stage, core_view: pd.DataFrame,
                  scores: tuple[str, ...] = ("combined_rank", "recon", "knn_cnn", "msp")) -> list[Figure]:
    """The core's most novel particles by each of a few scores."""
    return [top_k_gallery(stage.bundle.core.images, core_view, name, k=stage.cfg.gallery_size, caption_columns=("pred",),
                          path=stage.figure(f"05_top_{name}.png"))
            for name in scores]


@step("the gallery of the most confused core particles", **CORE)
def confused(stage: Stage, core_view: pd.DataFrame) -> Figure:
    """The core particles the classifier is least sure of."""
    return confused_gallery(stage.bundle.core.images, core_view, k=stage.cfg.gallery_size,
                            path=stage.figure("05_most_confused.png"))


@step("the gallery per predicted class", **CORE)
def per_class_gallery(stage: Stage, core_view: pd.DataFrame) -> Figure:
    """A sample of the core's particles per predicted class, the most confident first."""
    return group_gallery(stage.bundle.core.images, core_view, by="pred", per_group=8, order_by="max_prob",
                         seed=stage.cfg.seed, title="Core particles per predicted class (most confident first)",
                         path=stage.figure("05_per_predicted_class.png"))


@step("the discovery cards", **CORE)
def discovery_cards(stage: Stage, core_view: pd.DataFrame) -> list[Figure]:
    """One card per candidate cluster: its crops, its features against the nearest class, where in the core it sits."""
    summary = stage.run.read("core_cluster_summary")
    table = stage.bundle.core.table.join(core_view[["combined_rank"]])
    cards = []
    for cluster in candidate_clusters(core_view, summary):
        nearest, reference = nearest_class_rows(summary, cluster, stage.table)
        members = core_view.index[core_view["cluster"] == cluster]
        cards.append(discovery_card(stage.bundle.core.images, table, members, reference, reference_class=nearest,
                                    title=f"Candidate cluster {cluster} ({len(members)} particles)",
                                    path=stage.figure(f"05_discovery_card_cluster_{cluster}.png")))
    return cards


@step("the traffic lights per sample", core_columns=(SAMPLE,), to="see which samples sit outside the training set")
def traffic_lights(stage: Stage, combination: Combination, core_view: pd.DataFrame) -> Figure:
    """Per sample, the share of particles inside the training set's 95th / 99th kNN-distance percentiles."""
    lights = traffic_light(core_view["knn_cnn"], combination.scorer.train_scores_["knn_cnn"])
    return traffic_light_bars(traffic_light_by_group(lights, stage.bundle.core.table[SAMPLE]),
                              path=stage.figure("05_traffic_light_by_sample.png"))


@step("the explorer", core=True, to="explore and review the core")
def explorer(stage: Stage, core_view: pd.DataFrame) -> Explorer:
    """The interactive map of the core (notebook 04's umap-learn map) linked to its crops and the review log."""
    core = stage.bundle.core.table
    return Explorer(load_map(stage.run, "core"), core[[c for c in (SAMPLE, DEPTH) if c in core]].join(core_view),
                    stage.bundle.core.images, stage.run, color_by="combined_rank", max_thumbnails=stage.cfg.gallery_size)


@step("the review", core=True, to="explore and review the core")
def review_top_cluster(stage: Stage, view: Explorer, core_view: pd.DataFrame) -> pd.Series:
    """The review without a mouse: record the top candidate cluster as a candidate class; the labels so far."""
    top = candidate_clusters(core_view, stage.run.read("core_cluster_summary"))[:1]
    if top:
        view.select(core_view.index[core_view["cluster"] == top[0]])
        view.name_box.value = f"candidate cluster {top[0]}"
        view.decide(CANDIDATE)
    return review_to_labels(load_review(stage.run)).value_counts()


@step("the stratigraphic diagram", core_columns=(SAMPLE, DEPTH), to="draw the core's classes against depth")
def depth_diagram(stage: Stage, core_view: pd.DataFrame) -> Figure | Skipped:
    """Notebook 02's per-sample composition and concentrations against depth, one panel per class, the unknown
    fraction of this notebook as its own panel, volcanic layers marked."""
    if not stage.run.exists("sample_composition"):
        return Skipped("the stratigraphic diagram", "notebook 02 of this run wrote no per-sample composition",
                       "run notebook 02 again")
    return stratigraphic_figure(stage.run.read("sample_composition"),
                                stage.run.read("core_concentrations") if stage.run.exists("core_concentrations") else None,
                                core_view, stage.bundle.core.table, ash_classes(stage.bundle.classes, stage.cfg.ash_classes),
                                stage.figure("05_stratigraphic_diagram.png"))


@step("the tephra pick list without the unknowns", core_columns=(SAMPLE,), to="pick ash shards for the microprobe")
def tephra_pick_list(stage: Stage, core_view: pd.DataFrame) -> tuple[pd.DataFrame, Figure] | Skipped:
    """Notebook 02's pick list again, the particles flagged unknown set aside: the list to take to the microprobe."""
    predictions = core_predictions(stage.run)
    unknown = core_view["unknown"] if "unknown" in core_view else None
    picks = write_pick_list(stage.run, stage.cfg, predictions, stage.bundle.core.table, stage.bundle.classes,
                            artifact="discovery_pick_list", unknown=unknown)
    if isinstance(picks, Skipped):
        return picks
    if unknown is not None and stage.run.exists("pick_list"):
        dropped = stage.run.read("pick_list")["particle_id"].isin(unknown.index[unknown.astype(bool)])
        print(f"{int(dropped.sum())} of notebook 02's {len(dropped)} picks are flagged unknown here and set aside")
    return picks, pick_sheet(stage.bundle.core.images, stage.bundle.core.table.index, picks, stage.cfg.pick_sheet_samples,
                             stage.figure("05_tephra_pick_sheet.png"))


def stratigraphic_figure(composition: pd.DataFrame, concentrations: pd.DataFrame | None, core_view: pd.DataFrame,
                         core: pd.DataFrame, ash: list[str], path: Path) -> Figure:
    """The diagram of a run's core: its unknown fraction per sample (when flagged) and its volcanic layers."""
    unknown = (core_view["unknown"].astype(float).groupby(core.loc[core_view.index, SAMPLE]).mean()
               if "unknown" in core_view else None)
    layers = volcanic_layers(composition, ash)
    if layers:
        print(f"volcanic layers (ash >= 3x the core's median fraction and >= 5%) at {', '.join(f'{d:.2f}' for d in layers)} m")
    return stratigraphic_diagram(composition, concentrations, unknown, layers, path=path)


def _done(value: object) -> object | None:
    """A step's result, or None when it was skipped."""
    return None if isinstance(value, Skipped) else value


def save(stage: Stage, core_view: pd.DataFrame | Skipped, loco: pd.DataFrame | Skipped,
         new_class: pd.DataFrame | Skipped, combination: Combination, threshold: UnknownThreshold | Skipped,
         result: OpenSet | Skipped, meta: Space, shift: ShiftCheck | Skipped | None = None) -> None:
    """The core's novelty table, the folds' table, notebook 05's numbers in metrics.json (skipped steps left out),
    and the novelty section of the model card (what ``icecore apply`` flags a new core with)."""
    finished_threshold = _done(threshold)
    update_model_card(stage.run, "novelty", {
        "ae_model": str(stage.run.file("model", model=f"ae{stage.cfg.ae_latent}").relative_to(stage.run.path)),
        "ae_latent": stage.cfg.ae_latent, "meta_features": list(meta.labelled.columns),
        "combined": combination.combined, "k_neighbors": stage.cfg.k_neighbors,
        "flag_quantile": stage.cfg.flag_quantile,
        "unknown_threshold": finished_threshold.threshold if finished_threshold is not None else None})
    if not isinstance(core_view, Skipped):
        stage.run.write("core_novelty", core_view)
    if not isinstance(loco, Skipped):
        stage.run.write("loco_novelty", loco)
    finished = _done(result)
    stage.run.update_metrics("05_discovery", summary_metrics(
        _done(new_class), _done(loco), combination.combined, _done(threshold),
        getattr(finished, "flagged_fraction", None), getattr(finished, "errors", None), _done(shift)))
