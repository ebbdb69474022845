"""Notebook apply_to_core (``icecore apply``): a finished run's models on a new core, nothing retrained.

A lab trains on its reference set once and measures core after core. This stage reads the training run's model
card and models (the core classifier of notebook 02 with its temperature and per-class thresholds; the
autoencoder and the novelty choices of notebook 05 when the run has them), packs the new core at the training
image size and writes into a fresh run directory: the predictions, the composition (raw and prior-adjusted, with
intervals), particles per ml per sample, the novelty flags with a gallery, and a drift report that says whether
this core looks like what the models were trained on. Given the training run's own core it reproduces that run's
predictions exactly (checked by :func:`same_core_check`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from ..config import AEConfig, ApplyConfig, CNNConfig, DiscoveryConfig, stage_config
from ..data.dataset import CoreData, load_core
from ..models.scaler import FeatureScaler
from ..novelty.detectors import KNNDistance
from ..novelty.metrics import traffic_light, traffic_light_by_group
from ..picklist import ash_classes
from ..plots.classify import plot_composition
from ..plots.concentration import concentration_figure
from ..plots.gallery import drift_report, group_gallery, top_k_gallery, traffic_light_bars
from ..quantify import composition_error
from ..run.artifacts import Run
from ..run.card import check_fits, data_fingerprint, read_model_card
from ..run.notebook import Skipped
from ..run.rundir import continue_run, copy_into, record_stage, start_run
from ..schema import DEPTH, FLOWCAM_FEATURES, SAMPLE, SPLIT, VOLUME
from ..shift.drift import feature_drift
from ..train.autoencoder import LATENT_PREFIX, RECON, load_autoencoder, score_part
from ..train.classifier import EMBED_PREFIX, ClassifierOutputs, TrainedClassifier
from .cnn import (
    COMPOSITION_METHODS,
    compositions,
    core_table,
    pick_sheet,
    sample_composition,
    sample_figure,
    write_pick_list,
)
from .concentration import class_table
from .discovery import ScorerInputs, core_inputs, fit_scorer, score, stratigraphic_figure
from .spaces import aligned_core, sessions_of

STAGE = "apply"
TRAINING_CARD = "training_model_card.json"  # the training run's card, copied into the apply run


@dataclass(frozen=True)
class Trained:
    """What a training run left for applying: its card, its configs, its reference particles, its core classifier."""

    run: Run
    card: dict[str, Any]
    cnn_cfg: CNNConfig
    reference: pd.DataFrame  # label, split and features of the labelled particles, keyed by particle id
    classifier: TrainedClassifier
    labelled: ClassifierOutputs  # the classifier's saved logits and embedding of the labelled particles

    def stage_cfg(self, cls: type, stage: str) -> Any:
        """A stage config of the training run as it recorded it (``params/<stage>.yaml``)."""
        path = self.run.path / "params" / f"{stage}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the training run has no finished notebook {stage}")
        return recorded_config(cls, path)


def recorded_config(cls: type, path: Path) -> Any:
    """A stage config as a run recorded it (``params/<stage>.yaml``: every field, its profile among them)."""
    recorded = yaml.safe_load(path.read_text())
    return stage_config(cls, recorded.pop("profile"), **recorded)


def open_trained(run_dir: Path | str, device: str) -> Trained:
    """A finished training run's card, classifier (on ``device``) and reference particles; nothing is retrained."""
    run = continue_run(run_dir)
    card = read_model_card(run.path)
    cnn_cfg = dataclasses.replace(recorded_config(CNNConfig, run.path / "params" / "02_cnn.yaml"), device=device)
    name = card["classifier"]["model"]
    classifier = TrainedClassifier.load(run.path / card["classifier"]["folder"], name, cnn_cfg)
    labelled = ClassifierOutputs.load(run, name)
    return Trained(run, card, cnn_cfg, run.read("reference_particles"), classifier, labelled)


@dataclass(frozen=True)
class ApplyStage:
    """The apply notebook's working context: its config, its fresh run directory, the trained run, the new core."""

    cfg: ApplyConfig
    run: Run
    trained: Trained
    data: CoreData

    def figure(self, filename: str) -> Path:
        """Where one of this run's figures is saved."""
        return self.run.figure(filename)


def open_apply(profile: str = "ci", *, train_run: str = "", run_dir: str = "", dataset: str = "",
               overrides: dict[str, Any] | None = None, progress: bool = True) -> ApplyStage:
    """The set-up cell: the training run's models, a fresh run directory, the new core packed and checked against the card.

    A dataset whose classes or features do not fit the models is refused (:class:`~icecore_lib.run.card.CardMismatch`)
    before anything is written.
    """
    cfg = stage_config(ApplyConfig, profile, overrides=overrides, train_run=train_run, run_dir=run_dir, dataset=dataset)
    trained = open_trained(cfg.train_run, cfg.device)
    data = load_core(dataclasses.replace(cfg, image_size=trained.card["classifier"]["image_size"]), progress=progress)
    check_fits(trained.card, data.classes, data.core.table, data.name)
    run = start_run(cfg.run_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-apply", latest=False)
    record_stage(run, STAGE, cfg)
    copy_into(run, trained.run.path / "model_card.json", TRAINING_CARD)
    print(f"apply: the models of {trained.run.path} (card {trained.card['id']}, classes "
          f"{', '.join(trained.card['classes'])}) on {data.name} ({len(data.core.table):,} particles) -> run {run.path}")
    return ApplyStage(cfg, run, trained, data)


@dataclass(frozen=True)
class Applied:
    """The classifier on the new core: its outputs (the labelled logits are the training run's) and the predictions."""

    outputs: ClassifierOutputs
    predictions: pd.DataFrame
    seconds: float


def classify(stage: ApplyStage) -> Applied:
    """Logits and embedding of every new particle; calibrated probabilities, predicted class and the thresholds."""
    trained, card = stage.trained, stage.trained.card["classifier"]
    start = time.perf_counter()
    logits, emb = trained.classifier.predict(stage.data.core, trained.cnn_cfg)
    seconds = time.perf_counter() - start
    outputs = ClassifierOutputs(card["model"], trained.classifier.classes, trained.labelled.labelled_logits, logits, None,
                                emb)
    thresholds = pd.Series({k: np.nan if v is None else v for k, v in card["thresholds"].items()}, dtype=float)
    predictions = core_table(outputs, card["temperature"], thresholds.reindex(outputs.classes))
    print(f"{len(logits):,} particles classified in {seconds:.1f} s ({len(logits) / max(seconds, 1e-9):,.0f} per s)")
    return Applied(outputs, predictions, seconds)


def assigned_counts(applied: Applied) -> pd.Series:
    """New-core particles per assigned class (``unassigned`` below the class's threshold)."""
    return applied.predictions["assigned"].value_counts()


def class_gallery(stage: ApplyStage, applied: Applied) -> Figure:
    """A seeded random sample of the new core's particles per predicted class: do the classes look right here?"""
    table = applied.predictions.reindex(stage.data.core.table.index)
    return group_gallery(stage.data.core.images, table, by="pred", per_group=8, caption_columns=("max_prob",),
                         seed=stage.cfg.seed, title=f"{stage.data.name}: a random sample per predicted class",
                         path=stage.figure("apply_per_predicted_class.png"))


@dataclass(frozen=True)
class Composition:
    """The new core's composition by each method with intervals; errors against the truth where it is known."""

    compositions: dict[str, pd.DataFrame]
    errors: pd.DataFrame | None


def composition(stage: ApplyStage, applied: Applied) -> Composition:
    """Classify-and-count, adjusted count and EM (the training run's priors and confusion rates), bootstrapped."""
    card = stage.trained.card["classifier"]
    found = compositions(applied.outputs, stage.trained.reference, card["temperature"], n_boot=stage.cfg.bootstrap,
                         seed=stage.cfg.seed)
    truth = stage.data.truth.reindex(applied.predictions.index) if stage.data.truth is not None else None
    errors = composition_error({m: c["fraction"] for m, c in found.items()}, truth) if truth is not None else None
    stage.run.write("applied_composition", pd.concat(found, names=["method"]).reset_index())
    return Composition(found, errors)


def composition_figure(stage: ApplyStage, result: Composition) -> Figure:
    """Each method's composition with its interval (and its error below where the truth is known)."""
    truth = result.errors["truth"] if result.errors is not None else None
    return plot_composition(result.compositions, truth=truth, path=stage.figure("apply_composition.png"),
                            title=f"Composition of {stage.data.name}")


def sample_profile(stage: ApplyStage, applied: Applied) -> Figure | pd.DataFrame | Skipped:
    """EM-adjusted composition per sample with intervals: against depth where the core has depths, else a table."""
    if SAMPLE not in stage.data.core.table:
        return Skipped("the composition per sample", f"the core has no {SAMPLE} column",
                       "add the sample or FlowCam run of each particle")
    by_sample = sample_composition(applied.outputs, stage.trained.card["classifier"]["temperature"],
                                   stage.data.core.table, stage.trained.reference, n_boot=stage.cfg.bootstrap,
                                   seed=stage.cfg.seed)
    stage.run.write("applied_sample_composition", by_sample)
    return sample_figure(by_sample, applied.outputs.classes, stage.figure("apply_composition_vs_depth.png"))


def concentrations(stage: ApplyStage, applied: Applied) -> pd.DataFrame | Skipped:
    """Per sample and predicted class: particles per ml with counting and counting+classification intervals."""
    core = stage.data.core.table.loc[applied.predictions.index]
    missing = [c for c in (SAMPLE, VOLUME) if c not in core]
    if missing:
        return Skipped("particles per ml per class", f"the core has no {missing[0]} column",
                       "give FlowCam run folders (their run summaries hold the fluid volume imaged)")
    table = class_table(applied.predictions, core, stage.trained.cnn_cfg.count_as, stage.cfg.blank_samples,
                        n_boot=stage.cfg.bootstrap, seed=stage.cfg.seed)
    stage.run.write("applied_concentrations", table)
    concentration_figure(table, path=stage.figure("apply_concentrations.png"))
    return table


def tephra_pick_list(stage: ApplyStage, applied: Applied,
                     scores: pd.DataFrame | Skipped) -> tuple[pd.DataFrame, Figure] | Skipped:
    """Per sample and ash class of the new core, the surest particles (flagged unknowns set aside) and a crop sheet."""
    core = stage.data.core.table
    if SAMPLE not in core:
        return Skipped("the tephra pick list", f"the core has no {SAMPLE} column",
                       "add the sample or FlowCam run of each particle")
    cfg = stage.trained.cnn_cfg
    unknown = scores["unknown"] if isinstance(scores, pd.DataFrame) and "unknown" in scores else None
    picks = write_pick_list(stage.run, cfg, applied.predictions, core, stage.trained.card["classes"],
                            artifact="applied_pick_list", unknown=unknown)
    if isinstance(picks, Skipped):
        return picks
    return picks, pick_sheet(stage.data.core.images, core.index, picks, cfg.pick_sheet_samples,
                             stage.figure("apply_tephra_pick_sheet.png"))


def novelty(stage: ApplyStage, applied: Applied) -> pd.DataFrame | Skipped:
    """Notebook 05's scores on the new core: detectors refitted on the training split's saved outputs, the combined
    rank over the scores 05 chose, and its "unknown" threshold."""
    section = stage.trained.card.get("novelty")
    if section is None:
        return Skipped("the novelty flags", "the training run has no notebook 05 results",
                       "run notebooks 03-05 in the training run")
    trained = stage.trained
    ae_cfg = trained.stage_cfg(AEConfig, "03_autoencoder")
    image_size = trained.card["classifier"]["image_size"]
    ae = load_autoencoder(trained.run.path / section["ae_model"], image_size, section["ae_latent"],
                          dataclasses.replace(ae_cfg, device=stage.cfg.device))
    core_ae = score_part(ae, stage.data.core, ae_cfg)
    labelled_ae = trained.run.read("outputs", part="labelled", model=Path(section["ae_model"]).name)
    cfg = trained.stage_cfg(DiscoveryConfig, "05_discovery")
    sessions, pred = sessions_of(stage.data.core.table), applied.predictions["pred"]
    meta = _meta_space(trained.reference, stage.data.core.table, section["meta_features"])
    if cfg.align_sessions:
        meta["core"] = aligned_core(meta["labelled"], meta["core"], trained.reference, sessions, pred)
    labelled = ScorerInputs(trained.labelled.labelled_logits, labelled_ae[RECON],
                            {"cnn": trained.labelled.labelled_embedding,
                             "ae": labelled_ae.filter(like=LATENT_PREFIX), "meta": meta["labelled"]})
    core = ScorerInputs(applied.outputs.core_logits, core_ae[RECON],
                        {"cnn": applied.outputs.core_embedding, "ae": core_ae.filter(like=LATENT_PREFIX),
                         "meta": meta["core"]})
    scorer = fit_scorer(labelled, trained.reference, cfg, combine=section["combined"])
    scores = score(scorer, core_inputs(labelled, core, trained.reference, sessions, pred, cfg))
    threshold = section["unknown_threshold"]
    return scores.assign(unknown=scores["combined_rank"] >= threshold) if threshold is not None else scores


def _meta_space(reference: pd.DataFrame, core: pd.DataFrame, features: list[str]) -> dict[str, pd.DataFrame]:
    """Notebook 05's metadata space: scaled on the training split as there, restricted to the features it kept."""
    scaler = FeatureScaler().fit(reference)
    return {part: pd.DataFrame(scaler.transform(t), index=t.index, columns=list(scaler.columns))[features]
            for part, t in (("labelled", reference), ("core", core))}


def depth_diagram(stage: ApplyStage, scores: pd.DataFrame | Skipped) -> Figure | Skipped:
    """The new core's classes against depth: one panel per class, the unknown fraction, volcanic layers marked."""
    if not stage.run.exists("applied_sample_composition") or DEPTH not in stage.data.core.table:
        return Skipped("the stratigraphic diagram", f"the core has no {SAMPLE} or {DEPTH} column",
                       "add each particle's sample and depth")
    concentrations = stage.run.read("applied_concentrations") if stage.run.exists("applied_concentrations") else None
    view = scores if not isinstance(scores, Skipped) else pd.DataFrame(index=stage.data.core.table.index)
    return stratigraphic_figure(stage.run.read("applied_sample_composition"), concentrations, view,
                                stage.data.core.table,
                                ash_classes(stage.trained.card["classes"], stage.trained.cnn_cfg.ash_classes),
                                stage.figure("apply_stratigraphic_diagram.png"))


def novelty_gallery(stage: ApplyStage, applied: Applied, scores: pd.DataFrame | Skipped) -> Figure | Skipped:
    """The most novel particles of the new core by the combined rank, captioned with their predicted class."""
    if isinstance(scores, Skipped):
        return scores.of("the most novel particles")
    table = scores.join(applied.predictions[["pred"]]).reindex(stage.data.core.table.index)
    return top_k_gallery(stage.data.core.images, table, "combined_rank", k=stage.cfg.gallery_size,
                         title=f"{stage.data.name}: the {stage.cfg.gallery_size} most novel particles",
                         path=stage.figure("apply_most_novel.png"))


@dataclass(frozen=True)
class Drift:
    """Is this core like what the models were trained on? Feature drift, per-particle lights, one verdict."""

    features: pd.DataFrame  # per feature: KS, SMD, PSI against the training split
    by_sample: pd.DataFrame  # per sample: particles and the share of each light
    red_fraction: float  # particles beyond the training set's 99th percentile of CNN-space kNN distance
    verdict: str  # green | amber | red
    reason: str


def drift(stage: ApplyStage, applied: Applied) -> Drift:
    """The new core against the training split: PSI/KS/SMD per feature, and each particle's CNN-space distance light.

    Under no shift 1% of particles lie beyond the training set's 99th percentile (red) and 5% beyond its 95th.
    The verdict is red when more than ``warn_red_fraction`` are red (the models see particles unlike any they
    learned: their classes and flags are not to be trusted without a look), amber above twice the expected 1%,
    green below.
    """
    reference, core = stage.trained.reference, stage.data.core.table
    train = reference[reference[SPLIT] == "train"]
    features = [f for f in FLOWCAM_FEATURES if f in train and f in core]
    table = feature_drift(train, core, features)
    embedding = stage.trained.labelled.labelled_embedding
    k = stage.trained.card.get("novelty", {}).get("k_neighbors", DiscoveryConfig.k_neighbors)
    knn = KNNDistance(k, progress=False).fit(embedding.loc[train.index].to_numpy())
    lights = traffic_light(pd.Series(knn.score_samples(applied.outputs.core_embedding.to_numpy()),
                                     index=applied.outputs.core_embedding.index), knn.train_scores_)
    groups = core[SAMPLE] if SAMPLE in core else pd.Series("core", index=core.index, name=SAMPLE)
    by_sample = traffic_light_by_group(lights, groups)
    red = float((lights == "red").mean())
    verdict = "red" if red > stage.cfg.warn_red_fraction else "amber" if red > 0.02 else "green"
    shifted = table.index[table["psi"] > 0.25]
    reason = (f"{red:.1%} of the particles lie beyond the training set's 99th percentile of CNN-space distance, 1% "
              f"expected without a shift; {len(shifted)} of {len(table)} features have PSI > 0.25"
              + (f", most {', '.join(shifted[:3])}; a feature also drifts when the core's classes differ" if len(shifted)
                 else ""))
    stage.run.write("applied_drift", table)
    stage.run.write("applied_drift_by_sample", by_sample)
    return Drift(table, by_sample, red, verdict, reason)


def drift_figures(stage: ApplyStage, result: Drift) -> tuple[Figure, Figure]:
    """The most shifted features, and per sample the share of particles in each light."""
    return (drift_report(result.features, path=stage.figure("apply_feature_drift.png")),
            traffic_light_bars(result.by_sample, path=stage.figure("apply_traffic_light_by_sample.png")))


def verdict_line(result: Drift) -> str:
    """The drift verdict as one line a person reads before any number of the run."""
    meaning = {"green": "this core looks like the training data: the predictions can be read as they are",
               "amber": "this core is somewhat unlike the training data: check the galleries before the numbers",
               "red": "this core is unlike the training data: retrain with some of its particles labelled, or read "
                      "its classes and flags as hints only"}
    return f"drift traffic light: {result.verdict.upper()}: {meaning[result.verdict]} ({result.reason})"


def same_core_check(stage: ApplyStage, applied: Applied, scores: pd.DataFrame | Skipped) -> str:
    """Given the training run's own core, the predictions (and novelty ranks) must equal that run's, exactly."""
    trained_core = stage.trained.card["dataset"]["parts"].get("core", {})
    if trained_core.get("pack_key") != stage.data.core.key:
        return "a core the training run did not see: nothing to compare with"
    # Parquet reads text columns back as pandas strings: the values are compared exactly, not their dtypes.
    pd.testing.assert_frame_equal(applied.predictions, stage.trained.run.read("core_predictions"), check_exact=True,
                                  check_dtype=False)
    compared = "predictions"
    if not isinstance(scores, Skipped) and stage.trained.run.exists("core_novelty"):
        theirs = stage.trained.run.read("core_novelty")
        pd.testing.assert_series_equal(scores["combined_rank"], theirs["combined_rank"], check_exact=True)
        compared += " and combined novelty ranks"
    return (f"the training run's own core: {compared} of all {len(applied.predictions):,} particles identical to "
            f"{stage.trained.run.path}")


def accuracy_on_truth(stage: ApplyStage, applied: Applied) -> dict[str, Any] | Skipped:
    """Accuracy and balanced accuracy on the particles of known classes, where the core's truth is known."""
    if stage.data.truth is None:
        return Skipped("the accuracy on this core", "it has no truth part (the true classes, known for synthetic data)")
    truth = stage.data.truth.reindex(applied.predictions.index)
    known = truth.isin(applied.outputs.classes)
    pred = applied.predictions.loc[known, "pred"]
    recall = (pred == truth[known]).groupby(truth[known]).mean()
    return {"accuracy": float((pred == truth[known]).mean()), "balanced_accuracy": float(recall.mean()),
            "per_class_recall": recall.to_dict(), "particles": int(known.sum()),
            "measured_on": f"{stage.data.name}'s truth part (synthetic twin)" if stage.data.name.startswith("synthetic")
            else f"{stage.data.name}'s truth part"}


def save(stage: ApplyStage, applied: Applied, result: Composition, scores: pd.DataFrame | Skipped,
         drift_result: Drift, accuracy: dict[str, Any] | Skipped) -> None:
    """The predictions (with the novelty columns), and the run's numbers in metrics.json (section ``apply``)."""
    table = applied.predictions if isinstance(scores, Skipped) else applied.predictions.join(scores)
    stage.run.write("applied_predictions", table)
    stage.run.write("applied_predictions_csv", table.drop(columns=[c for c in table if c.startswith(EMBED_PREFIX)]))
    metrics: dict[str, Any] = {
        "training_run": str(stage.trained.run.path), "model_card": stage.trained.card["id"],
        "dataset": stage.data.name, "particles": len(table), "core_data": data_fingerprint(stage.data.core),
        "classify_seconds": applied.seconds, "classify_per_second": len(table) / max(applied.seconds, 1e-9),
        "assigned": assigned_counts(applied).to_dict(),
        "composition": {m: result.compositions[m]["fraction"].to_dict() for m in COMPOSITION_METHODS},
        "drift": {"verdict": drift_result.verdict, "red_fraction": drift_result.red_fraction,
                  "max_psi": float(drift_result.features["psi"].max())},
    }
    if result.errors is not None:
        metrics["composition_mae"] = result.errors.filter(like="_abs_error").mean().to_dict()
    if not isinstance(scores, Skipped) and "unknown" in scores:
        metrics["flagged_unknown_fraction"] = float(scores["unknown"].mean())
    if not isinstance(accuracy, Skipped):
        metrics["accuracy"] = accuracy
    stage.run.update_metrics(STAGE, metrics)
