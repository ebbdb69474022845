"""Discovery workflow of notebook 05: novelty scores for the core, measured on leave-one-class-out runs.

Scores come from what notebooks 02-04 wrote (classifier logits, autoencoder loss and latent, CNN embedding,
UMAP map) and from the standardised metadata; the detectors are fitted on the training split only, so
scoring new particles needs no refit. The combined rank averages the per-score percentile ranks of the
scores that exist for every model (the leave-one-class-out runs have no UMAP map): the UMAP-space
outlierness (``knn_umap``) is reported beside it, as its own score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import autoencode, classify, loco, maps, novelty, quantify, spaces
from .config import DiscoveryConfig
from .data import DatasetBundle
from .schema import LABEL, NEW_CLASS, SPLIT

UMAP_SCORE = "knn_umap"


@dataclass(frozen=True)
class ScorerInputs:
    """Everything a novelty score reads, for one set of particles (keyed by particle id)."""

    logits: pd.DataFrame
    recon: pd.Series
    embeddings: dict[str, pd.DataFrame] = field(default_factory=dict)

    def rows(self, ids: pd.Index) -> ScorerInputs:
        """The same inputs restricted to some particles."""
        return ScorerInputs(self.logits.loc[ids], self.recon.loc[ids], {k: v.loc[ids] for k, v in self.embeddings.items()})


def _inputs(cnn: classify.ClassifierOutputs, ae: autoencode.AEOutputs, meta: spaces.Space, part: str) -> ScorerInputs:
    """Scorer inputs of the labelled part or the core from one CNN, one autoencoder and the metadata."""
    logits = cnn.labelled_logits if part == "labelled" else cnn.core_logits
    emb = cnn.labelled_embedding if part == "labelled" else cnn.core_embedding
    ae_table = ae.labelled if part == "labelled" else ae.core
    return ScorerInputs(logits, ae_table[autoencode.RECON],
                        {"cnn": emb, "ae": ae_table.filter(like=autoencode.LATENT_PREFIX),
                         "meta": meta.labelled if part == "labelled" else meta.core})


def run_inputs(run_dir: Path, bundle: DatasetBundle, cfg: DiscoveryConfig, meta: spaces.Space) -> dict[str, ScorerInputs]:
    """Scorer inputs of the labelled part and the core from the run's notebook 02-03 models and a metadata space."""
    cnn = classify.load_outputs(run_dir, spaces.core_model_name(run_dir))
    ae = autoencode.load_outputs(run_dir, cfg.ae_latent)
    return {part: _inputs(cnn, ae, meta, part) for part in ("labelled", "core")}


def fit_scorer(inputs: ScorerInputs, table: pd.DataFrame, cfg: DiscoveryConfig, exclude: tuple[str, ...] = (),
               combine: list[str] | None = None, progress: bool = True) -> novelty.NoveltyScorer:
    """Fit every detector on the training split (minus excluded classes), with labels for Mahalanobis."""
    train = table.index[(table[SPLIT] == "train") & ~table[LABEL].isin(exclude)]
    fitted = inputs.rows(train)
    return novelty.NoveltyScorer(k=cfg.k_neighbors, quantile=cfg.flag_quantile, combine=combine,
                                 progress=progress).fit(fitted.logits, fitted.recon, fitted.embeddings,
                                                        labels=table.loc[train, LABEL])


def score(scorer: novelty.NoveltyScorer, inputs: ScorerInputs) -> pd.DataFrame:
    """Novelty scores (higher = more novel), combined rank and the flagging scores of some particles."""
    return scorer.score(inputs.logits, inputs.recon, inputs.embeddings)


def umap_outlierness(run_dir: Path, table: pd.DataFrame, k: int) -> pd.Series:
    """kNN distance of each core particle to the training split on notebook 04's UMAP map (the study's third way)."""
    train_map = maps.load_map(run_dir, "labelled").loc[table.index[table[SPLIT] == "train"]]
    core_map = maps.load_map(run_dir, "core")
    detector = novelty.KNNDistance(k).fit(train_map.to_numpy())
    return pd.Series(detector.score(core_map.to_numpy()), index=core_map.index, name=UMAP_SCORE)


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


def holdout_scores(run_dir: Path, bundle: DatasetBundle, cfg: DiscoveryConfig, holdout: str,
                   meta: spaces.Space, progress: bool = True) -> HoldoutScores:
    """Score one fold with detectors fitted on the models of notebook 04 that never saw the held-out class.

    The query is the test split, all classes: the held-out class keeps its natural share there, so recall in
    the top k means what it would mean on a core where the new class is a minority.
    """
    table = bundle.train.table
    fold = loco.load(run_dir, holdout, cfg.ae_latent)
    inputs = _inputs(fold.cnn, fold.ae, meta, "labelled")
    scorer = fit_scorer(inputs, table, cfg, exclude=(holdout,), progress=progress)
    query = table.index[table[SPLIT] == "test"]
    scores = score(scorer, inputs.rows(query))
    return HoldoutScores(holdout, scores, (table.loc[query, LABEL] == holdout).rename("is_novel"),
                         scorer.percentiles(scores[scorer.score_names_]))


def score_shift(scorer: novelty.NoveltyScorer, inputs: dict[str, ScorerInputs], table: pd.DataFrame) -> pd.Series:
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


def choose_scores(loco_novelty: pd.DataFrame, shift: pd.Series, margin: float, max_shift: float) -> pd.DataFrame:
    """Which scores the combined rank averages: stable under the acquisition shift, and near the best on LOCO.

    The leave-one-class-out folds have no acquisition shift (held-out classes come from lab sessions), so they
    rank scores by how well they separate a new class but cannot see how a score reacts to the core's sessions;
    ``score_shift`` can. Kept: ``|shift| <= max_shift`` and a mean LOCO AUROC within ``margin`` of the best such
    score (averaging in clearly weaker scores adds their false alarms). The folds choose, so their own
    combined-rank row is optimistic; the core is the independent check.
    """
    auroc = loco_novelty.loc["mean"].xs("auroc", level="metric").drop("combined_rank", errors="ignore")
    table = pd.DataFrame({"loco_auroc": auroc, "acquisition_shift": shift.reindex(auroc.index)})
    table["stable"] = table["acquisition_shift"].abs() <= max_shift
    if not table["stable"].any():
        raise ValueError(f"every score shifts by more than {max_shift} between lab and core: raise max_score_shift")
    best = table.loc[table["stable"], "loco_auroc"].max()
    table["chosen"] = table["stable"] & (table["loco_auroc"] >= best - margin)
    return table.sort_values("loco_auroc", ascending=False).rename_axis("score")


def holdouts_in_run(run_dir: Path) -> list[str]:
    """The classes notebook 04 held out (from the tables it wrote)."""
    found = sorted(p.name.removeprefix("loco_").removesuffix("_cnn_labelled.parquet")
                   for p in (Path(run_dir) / "tables").glob("loco_*_cnn_labelled.parquet"))
    if not found:
        raise FileNotFoundError(f"no leave-one-class-out tables in {run_dir}/tables: run notebook 04 first")
    return found


def pooled_threshold(folds: list[HoldoutScores], target_tpr: float) -> novelty.UnknownThreshold:
    """An "unknown" threshold on the combined rank that catches ``target_tpr`` of held-out particles, all folds pooled."""
    ranks = pd.concat([f.scores["combined_rank"] for f in folds])
    novel = pd.concat([f.is_novel for f in folds]).to_numpy()
    return novelty.unknown_threshold(ranks[novel].to_numpy(), ranks[~novel].to_numpy(), target_tpr)


def new_class_metrics(scores: pd.DataFrame, truth: pd.Series | None, ks: tuple[int, ...]) -> pd.DataFrame | None:
    """AUROC, FPR95 and recall in the top k of every score for the planted new class (None without truth)."""
    if truth is None:
        return None
    is_new = (truth.reindex(scores.index) == NEW_CLASS).rename("is_novel")
    if not is_new.any():
        return None
    return novelty.novelty_metrics(scores, is_new, ks).sort_values("auroc", ascending=False)


def flagged_by_sample(unknown: pd.Series, core: pd.DataFrame) -> pd.DataFrame:
    """Fraction of particles flagged unknown per sample, with its depth, shallowest first."""
    groups = core[["sample_id", "depth_m"]].groupby("sample_id")["depth_m"].transform("median").round(3)
    return novelty.flag_fraction_by_group(unknown, pd.DataFrame({"sample_id": core["sample_id"], "depth_m": groups}))


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
    proba = classify.table_proba(core_pred)
    kept = ~unknown.reindex(proba.index).fillna(False).astype(bool)
    if not kept.any():
        raise ValueError("every core particle is flagged unknown: there is no known-class composition to estimate")
    priors = classify.train_priors(list(proba.columns), table)
    parts = {"all particles": proba, "unknowns set aside": proba[kept]}
    return {f"{method.upper()}, {name}": quantify.bootstrap_composition(part, method, n_boot=n_boot, seed=seed,
                                                                        train_priors=priors)
            for name, part in parts.items() for method in ("cc", "em")}


def summary_metrics(new_class: pd.DataFrame | None, loco_novelty: pd.DataFrame, combined: list[str],
                    threshold: novelty.UnknownThreshold, flagged_fraction: float,
                    composition_errors: pd.DataFrame | None = None) -> dict:
    """Notebook 05's numbers for metrics.json."""
    metrics = {"loco_mean": loco_novelty.loc["mean"].unstack().to_dict(orient="index"),
               "combined_rank_scores": combined,
               "unknown_threshold": {"combined_rank": threshold.threshold, "tpr": threshold.tpr, "fpr": threshold.fpr},
               "core_flagged_unknown_fraction": flagged_fraction}
    if new_class is not None:
        metrics["new_class"] = new_class.to_dict(orient="index")
        metrics["best_score_auroc"] = str(new_class.index[0])
    if composition_errors is not None:
        metrics["composition_mae"] = composition_errors.filter(like="_abs_error").mean().to_dict()
    return metrics

