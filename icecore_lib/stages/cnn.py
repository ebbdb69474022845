"""Notebook 02: ResNet18 with and without metadata, calibrated, thresholded, audited; the core's predictions and composition.

The classifier, its calibration and thresholds need the labelled part only; the core's predictions and composition
need a core part, the composition against depth its sample_id and depth_m, the audits against the truth a truth
part, the shortcut audit a session column: each step without what it needs is a Skipped line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..config import StageConfig
from ..data.dataset import DatasetBundle
from ..data.splits import split_ids
from ..evaluate import (
    TemperatureScaler,
    apply_thresholds,
    classification_report_df,
    compare_models,
    confusion_counts,
    expected_calibration_error,
    fit_thresholds,
    metric_scalars,
    reliability_curve,
    row_normalise,
    threshold_coverage,
)
from ..picklist import ash_classes, pick_list
from ..plots.classify import plot_composition, plot_composition_depth
from ..plots.gallery import group_gallery
from ..quantify import bootstrap_composition, composition_by_group, composition_error, group_errors
from ..run.artifacts import Run
from ..run.card import write_model_card
from ..run.notebook import Skipped, Stage, step
from ..schema import DEPTH, LABEL, SAMPLE, SESSION
from ..shift.audit import ProbeResult, SplitDrop, domain_drop, session_probe
from ..train.classifier import EMBED_PREFIX, PREPROCESSING_FILE, ClassifierOutputs, evaluate_split, fit_torch_classifier

PROBA_PREFIX = "p_"  # the calibrated probability columns of the core predictions table


COMPOSITION_METHODS = ("cc", "acc", "em")  # raw counts, then the two prior-shift corrections


@dataclass(frozen=True)
class Calibration:
    """Temperature scaling fitted on validation logits, with test ECE before and after."""

    temperature: float
    ece_before: float
    ece_after: float
    curves: dict[str, pd.DataFrame]


def calibrate(outputs: ClassifierOutputs, table: pd.DataFrame, n_bins: int = 15) -> Calibration:
    """Fit a temperature on val; report the test set's ECE and reliability curves before and after."""
    val = split_ids(table, "val")
    scaler = TemperatureScaler().fit(outputs.labelled_logits.loc[val], table.loc[val, LABEL], outputs.classes)
    t = scaler.temperature_
    y = table.loc[split_ids(table, "test"), LABEL]
    probas = {"uncalibrated": outputs.proba("test", table), f"temperature {t:.2f}": outputs.proba("test", table, t)}
    eces = {name: expected_calibration_error(p, y, n_bins) for name, p in probas.items()}
    curves = {f"{name} (ECE {eces[name]:.3f})": reliability_curve(p, y, n_bins) for name, p in probas.items()}
    before, after = eces.values()
    return Calibration(t, before, after, curves)


def core_table(outputs: ClassifierOutputs, temperature: float, thresholds: pd.Series) -> pd.DataFrame:
    """Per core particle: calibrated probabilities, predicted class, max probability, unassigned flag, embedding."""
    proba = outputs.core_proba(temperature)
    pred, unassigned = apply_thresholds(proba, thresholds)
    table = proba.add_prefix(PROBA_PREFIX).assign(pred=proba.idxmax(axis=1), max_prob=proba.max(axis=1),
                                          assigned=pred, unassigned=unassigned)
    if outputs.core_embedding is not None:
        table = table.join(outputs.core_embedding)
    return table


def table_proba(core_predictions: pd.DataFrame) -> pd.DataFrame:
    """The calibrated class probabilities of a :func:`core_table` (or its saved copy), one column per class."""
    columns = [c for c in core_predictions.columns if c.startswith(PROBA_PREFIX)]
    return core_predictions[columns].rename(columns=lambda c: c.removeprefix(PROBA_PREFIX))


def train_priors(classes: Sequence[str], table: pd.DataFrame) -> pd.Series:
    """Class fractions of the training split: the prior the classifier learned, which EM adjusts away from."""
    labels = table.loc[split_ids(table, "train"), LABEL]
    return labels.value_counts(normalize=True).reindex(list(classes), fill_value=0.0)


def confusion_rates(outputs: ClassifierOutputs, table: pd.DataFrame) -> pd.DataFrame:
    """The validation split's row-normalised confusion matrix (rows true): what adjusted counting inverts."""
    val = split_ids(table, "val")
    pred = outputs.labelled_logits.loc[val].idxmax(axis=1)
    return row_normalise(confusion_counts(table.loc[val, LABEL], pred, outputs.classes))


def _composition_options(outputs: ClassifierOutputs, table: pd.DataFrame) -> dict[str, Any]:
    """What the corrections need: the training priors (EM) and the validation confusion rates (adjusted count)."""
    return {"train_priors": train_priors(outputs.classes, table), "confusion_rates": confusion_rates(outputs, table)}


def compositions(outputs: ClassifierOutputs, table: pd.DataFrame, temperature: float, *, n_boot: int,
                 seed: int) -> dict[str, pd.DataFrame]:
    """Core composition by classify-and-count, adjusted count and EM prior adjustment, with bootstrap intervals.

    The intervals resample the core's particles; the validation confusion rates of the adjusted count stay fixed.
    """
    proba, options = outputs.core_proba(temperature), _composition_options(outputs, table)
    return {method: bootstrap_composition(proba, method, n_boot=n_boot, seed=seed, **options)
            for method in COMPOSITION_METHODS}


def sample_errors(outputs: ClassifierOutputs, table: pd.DataFrame, temperature: float, samples: pd.Series,
                  truth: pd.Series) -> pd.DataFrame:
    """Per core sample: each method's mean absolute error per class against the truth, and its particle count.

    Each depth sample has a composition of its own (an ash layer, a dusty stretch), so each has its own prior shift.
    """
    proba, options = outputs.core_proba(temperature), _composition_options(outputs, table)
    samples = samples.reindex(proba.index)
    by_sample = {method: composition_by_group(proba, samples, method, progress=False, **options)
                 for method in COMPOSITION_METHODS}
    return group_errors(by_sample, truth, samples).join(samples.value_counts().rename("n_particles"))


def comparison_table(metrics: dict[str, Any], tests: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The study's slide: metadata models (from notebook 01's metrics) against the image models, test split."""
    rows = {f"{name.upper()} (metadata)": v for name, v in metrics.get("01_metadata", {}).items()}
    rows |= {f"CNN ({'images + metadata' if v == 'both' else 'images'})": r for v, r in tests.items()}
    return compare_models(rows)


def best_variant(outputs: dict[str, ClassifierOutputs], table: pd.DataFrame) -> str:
    """The variant with the highest validation accuracy (the test split stays untouched by the choice)."""
    return max(outputs, key=lambda v: evaluate_split(outputs[v], table, "val")["accuracy"])


@step("the core's accuracy drop", truth=True, to="measure the accuracy lost from the test split to the core")
def core_accuracy_drop(stage: Stage, outputs: ClassifierOutputs, test: dict[str, Any]) -> SplitDrop:
    """Accuracy on the core's known-class particles against the test split."""
    truth, pred = _core_known(outputs, stage.bundle)
    return domain_drop(test["accuracy"], float((pred == truth).mean()), domain="core (known classes)")


def _core_known(outputs: ClassifierOutputs, bundle: DatasetBundle) -> tuple[pd.Series, pd.Series]:
    """True and predicted class of the core particles whose true class the model knows."""
    truth = bundle.truth.reindex(outputs.core_logits.index)
    known = truth.isin(outputs.classes).to_numpy()
    return truth[known], outputs.core_logits[known].idxmax(axis=1)


@step("the per-class recall on the core", truth=True, to="find the classes the core's acquisition breaks")
def core_recall_table(stage: Stage, outputs: ClassifierOutputs, test: dict[str, Any],
                      warn_drop: float = 0.10) -> pd.DataFrame:
    """Per class: recall on the test split and on the core's truth, and a flag where the core loses > ``warn_drop``.

    An average accuracy can hide one class that the core's acquisition shift breaks; this table does not.
    """
    core = classification_report_df(*_core_known(outputs, stage.bundle), outputs.classes)
    table = pd.DataFrame({"test_recall": test["per_class"]["recall"], "core_recall": core["recall"],
                          "core_support": core["support"]})
    table["drop"] = table["test_recall"] - table["core_recall"]
    table["warning"] = table["drop"] > warn_drop
    return table


def cnn_metrics(tests: dict[str, dict[str, Any]], best: str, calibration: Calibration, coverage: pd.DataFrame,
                probe: ProbeResult | Skipped, core_drop: SplitDrop | Skipped, core_recall: pd.DataFrame | Skipped,
                composition: CoreComposition | Skipped, per_sample: pd.DataFrame | Skipped) -> dict[str, Any]:
    """Everything notebook 02 reports, as plain values for metrics.json (a skipped step leaves its entry out)."""
    metrics: dict[str, Any] = {v: metric_scalars(r) for v, r in tests.items()}
    metrics["core_model"] = best
    metrics["calibration"] = {"temperature": calibration.temperature, "ece_before": calibration.ece_before,
                              "ece_after": calibration.ece_after}
    metrics["thresholds"] = coverage.reset_index().to_dict(orient="records")
    if isinstance(probe, ProbeResult):
        metrics["session_probe"] = probe.summary()
    if isinstance(core_drop, SplitDrop):
        metrics["core_accuracy"] = {"test": core_drop.reference, "core": core_drop.shifted, "warning": core_drop.warning}
    if isinstance(core_recall, pd.DataFrame):
        metrics["core_recall"] = core_recall.to_dict(orient="index")
    if isinstance(composition, CoreComposition) and composition.errors is not None:
        metrics["composition_mae"] = composition.errors.filter(like="_abs_error").mean().to_dict()
    if isinstance(per_sample, pd.DataFrame):
        metrics["composition_mae_per_sample"] = per_sample[list(COMPOSITION_METHODS)].mean().to_dict()
    return metrics


def train_variants(stage: Stage) -> dict[str, ClassifierOutputs]:
    """Train every CNN variant of ``cfg.variants`` (images; images + metadata) and predict every particle."""
    return {variant: fit_torch_classifier(stage.bundle, stage.cfg, variant, stage.run.file("model", model=f"cnn_{variant}"))
            for variant in stage.cfg.variants}


def test_results(stage: Stage, outputs: dict[str, ClassifierOutputs]) -> dict[str, dict[str, Any]]:
    """Every metric of each variant on the test split, with bootstrap intervals."""
    return {variant: evaluate_split(out, stage.table, "test", n_boot=stage.cfg.bootstrap, seed=stage.cfg.seed)
            for variant, out in outputs.items()}


@dataclass(frozen=True)
class Trust:
    """Per-class probability thresholds fitted on validation at the target precision, and their test coverage."""

    thresholds: pd.Series
    coverage: pd.DataFrame


def fit_trust(stage: Stage, outputs: ClassifierOutputs, calibration: Calibration) -> Trust:
    """Thresholds on the calibrated validation probabilities; "unassigned" below them; coverage on test."""
    table, t = stage.table, calibration.temperature
    thresholds = fit_thresholds(outputs.proba("val", table, t), table.loc[split_ids(table, "val"), LABEL],
                                stage.cfg.target_precision)
    coverage = threshold_coverage(outputs.proba("test", table, t), thresholds,
                                  table.loc[split_ids(table, "test"), LABEL])
    return Trust(thresholds, coverage)


@step("the shortcut audit", columns=(SESSION,), to="test whether image statistics tell the sessions apart")
def shortcut_audit(stage: Stage) -> ProbeResult | Skipped:
    """Can image background and blur statistics alone tell the acquisition sessions apart?"""
    if stage.table[SESSION].nunique() < 2:
        return Skipped("the shortcut audit", "the labelled particles come from one acquisition session",
                       "label particles from two or more sessions to test whether image statistics tell them apart")
    return session_probe(stage.bundle.train.images, stage.table[SESSION], stage.table[LABEL], seed=stage.cfg.seed)


CORE = {"core": True, "to": "classify the core and estimate its composition"}


@step("the core's predictions", **CORE)
def predict_core(stage: Stage, outputs: ClassifierOutputs, calibration: Calibration, trust: Trust) -> pd.DataFrame:
    """The core's per-particle predictions, written to the run (Parquet with the embedding, CSV without)."""
    table = core_table(outputs, calibration.temperature, trust.thresholds)
    stage.run.write("core_predictions", table)
    stage.run.write("core_predictions_csv", table.drop(columns=[c for c in table if c.startswith(EMBED_PREFIX)]))
    return table


@step("the core's predicted classes", **CORE)
def assigned_counts(stage: Stage, predictions: pd.DataFrame) -> pd.Series:
    """Core particles per assigned class (``unassigned`` below the class's threshold)."""
    return predictions["assigned"].value_counts()


@dataclass(frozen=True)
class CoreComposition:
    """The core's composition by each method, with intervals; errors against the truth where it is known."""

    compositions: dict[str, pd.DataFrame]
    errors: pd.DataFrame | None


@step("the core's composition", **CORE)
def core_composition(stage: Stage, outputs: ClassifierOutputs, calibration: Calibration) -> CoreComposition:
    """Classify-and-count, adjusted count and EM over the whole core; scored against the truth file when there is one."""
    compositions_ = compositions(outputs, stage.table, calibration.temperature, n_boot=stage.cfg.bootstrap,
                                 seed=stage.cfg.seed)
    truth = core_truth(stage, outputs)
    errors = (composition_error({m: c["fraction"] for m, c in compositions_.items()}, truth)
              if truth is not None else None)
    return CoreComposition(compositions_, errors)


def core_truth(stage: Stage, outputs: ClassifierOutputs) -> pd.Series | None:
    """The core particles' true classes in the order of the predictions (None without a truth file)."""
    if stage.bundle.truth is None or outputs.core_logits is None:
        return None
    return stage.bundle.truth.reindex(outputs.core_logits.index)


@step("the composition figure", **CORE)
def composition_figure(stage: Stage, composition: CoreComposition) -> Figure:
    """Each method's composition with its interval; below it, its error against the truth when known."""
    truth = composition.errors["truth"] if composition.errors is not None else None
    return plot_composition(composition.compositions, truth=truth, path=stage.figure("02_core_composition.png"))


@step("the composition errors", truth=True, to="score the composition against the truth")
def composition_errors(stage: Stage, composition: CoreComposition) -> pd.DataFrame:
    """Per class: each method's estimate against the truth."""
    return composition.errors.round(4)


@step("the composition per sample", core_columns=(SAMPLE,), to="see the composition sample by sample")
def sample_profile(stage: Stage, outputs: ClassifierOutputs, calibration: Calibration) -> Figure | pd.DataFrame:
    """EM-adjusted composition per sample with bootstrap intervals (written to the run): against depth where the
    core has depths, else a table (sample x class)."""
    by_sample = sample_composition(outputs, calibration.temperature, stage.bundle.core.table, stage.table,
                                   n_boot=stage.cfg.bootstrap, seed=stage.cfg.seed)
    stage.run.write("sample_composition", by_sample)
    return sample_figure(by_sample, outputs.classes, stage.figure("02_composition_vs_depth.png"))


def sample_composition(outputs: ClassifierOutputs, temperature: float, core: pd.DataFrame, reference: pd.DataFrame,
                       *, n_boot: int, seed: int) -> pd.DataFrame:
    """Per sample (and its depth): the EM-adjusted fraction of each class and its bootstrap interval, long format.

    ``reference``: the labelled table whose training split gives the prior EM adjusts away from.
    """
    depth = core[DEPTH] if DEPTH in core else None
    return composition_by_group(outputs.core_proba(temperature), core[SAMPLE], method="em", n_boot=n_boot, seed=seed,
                                train_priors=train_priors(outputs.classes, reference), depth=depth)


def sample_figure(by_sample: pd.DataFrame, classes: Sequence[str], path: Path) -> Figure | pd.DataFrame:
    """The per-sample composition against depth, or as a sample x class table where the core has no depths."""
    if DEPTH not in by_sample:
        print(f"the core has no {DEPTH} column: the composition per sample, in {SAMPLE} order")
        return by_sample.pivot(index=SAMPLE, columns="class", values="fraction")[list(classes)].round(3)
    return plot_composition_depth(by_sample, path=path)


@step("the composition errors per sample", truth=True, core_columns=(SAMPLE,),
      to="score each sample's composition against the truth")
def per_sample_errors(stage: Stage, outputs: ClassifierOutputs, calibration: Calibration) -> pd.DataFrame:
    """Each sample's composition error per method."""
    return sample_errors(outputs, stage.table, calibration.temperature, stage.bundle.core.table[SAMPLE],
                         core_truth(stage, outputs))


def save(stage: Stage, outputs: dict[str, ClassifierOutputs], metrics: dict[str, Any]) -> None:
    """Every variant's per-particle outputs, notebook 02's numbers in metrics.json (section ``02_cnn``), the model card."""
    for out in outputs.values():
        out.save(stage.run)
    stage.run.update_metrics("02_cnn", metrics)
    write_model_card(stage.run, dataset=stage.bundle.name, parts=stage.bundle.parts(), classes=stage.bundle.classes,
                     classifier=card_classifier(stage, metrics), metrics=card_metrics(metrics))


def card_classifier(stage: Stage, metrics: dict[str, Any]) -> dict[str, Any]:
    """What the model card says of the core's classifier: where it lives and what applying it needs."""
    best = metrics["core_model"]
    folder = stage.run.file("model", model=f"cnn_{best}")
    preprocessing = json.loads((folder / PREPROCESSING_FILE).read_text())
    return {"model": best, "folder": str(folder.relative_to(stage.run.path)), "classes": preprocessing["classes"],
            "image_size": stage.cfg.image_size, "metadata_features": stage.cfg.metadata_features,
            "scaler_columns": preprocessing["scaler"]["columns"] if best == "both" else [],
            "temperature": metrics["calibration"]["temperature"],
            "thresholds": {row["class"]: row["threshold"] for row in metrics["thresholds"]},
            "target_precision": stage.cfg.target_precision}


def card_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The card's numbers: each variant's test accuracy and balanced accuracy, the calibration, the core's accuracy."""
    keep = ("accuracy", "balanced_accuracy", "macro_f1")
    card = {v: {k: metrics[v][k] for k in keep if k in metrics[v]} for v in metrics if isinstance(metrics[v], dict)
            and "accuracy" in metrics[v]}
    return card | {"calibration": metrics["calibration"], "measured_on": "the test split of the training dataset"}


@step("the tephra pick list", core_columns=(SAMPLE,), to="pick ash shards per sample for the microprobe")
def tephra_pick_list(stage: Stage, predictions: pd.DataFrame) -> tuple[pd.DataFrame, Figure] | Skipped:
    """Per sample and ash class, the surest particles (table written to the run) and a crop sheet of the richest samples."""
    picks = write_pick_list(stage.run, stage.cfg, predictions, stage.bundle.core.table, stage.bundle.classes)
    if isinstance(picks, Skipped):
        return picks
    return picks, pick_sheet(stage.bundle.core.images, stage.bundle.core.table.index, picks,
                             stage.cfg.pick_sheet_samples, stage.figure("02_tephra_pick_sheet.png"))


def write_pick_list(run: Run, cfg: StageConfig, predictions: pd.DataFrame, core: pd.DataFrame,
                    classes: dict[str, str], artifact: str = "pick_list",
                    unknown: pd.Series | None = None) -> pd.DataFrame | Skipped:
    """The pick list of a run's core predictions (``unknown`` particles set aside), written as ``artifact``."""
    ash = ash_classes({k: classes.get(k, k) for k in table_proba(predictions).columns}, cfg.ash_classes)
    if not ash:
        return Skipped("the tephra pick list", "no class is an ash class",
                       "name them with -p ash_classes=[...] (classes whose name says ash or tephra are found alone)")
    picks = pick_list(predictions, core, ash, cfg.picks_per_class, unknown)
    run.write(artifact, picks)
    return picks


def pick_sheet(images: np.ndarray, index: pd.Index, picks: pd.DataFrame, samples: int, path: Path) -> Figure:
    """The crops of the pick list, one row per (sample, ash class), for the ``samples`` samples with the most picks."""
    richest = picks[SAMPLE].value_counts().index[:samples]
    shown = picks[picks[SAMPLE].isin(richest)]
    depth = shown.groupby(SAMPLE)[DEPTH].transform("median").round(2) if DEPTH in shown else None
    label = shown[SAMPLE].astype(str) + (" @ " + depth.astype(str) + " m" if depth is not None else "")
    view = pd.DataFrame({"pick": (label + " / " + shown["class"]).to_numpy(), "probability": shown["probability"].to_numpy()},
                        index=pd.Index(shown["particle_id"], name=index.name)).reindex(index)
    return group_gallery(images, view, by="pick", per_group=int(shown["rank"].max()), order_by="probability",
                         title="Tephra pick list: the surest ash particles per sample (id below each crop)", path=path)
