"""Classifier workflow of notebooks 01 and 02: train on the split, predict every particle, calibrate, threshold.

Every classifier (XGBoost, metadata MLP, ResNet18 with or without metadata) ends as one
:class:`ClassifierOutputs`: logits and 40-unit embeddings for the labelled part and the core, as DataFrames
keyed by particle id. Evaluation, calibration and composition work on those, whatever the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from . import evaluate as ev
from . import quantify
from .audit import domain_drop
from .config import MetadataConfig, TrainConfig
from .data import DatasetBundle
from .models.bdt import BDTClassifier, search
from .models.cnn import ParticleCNN
from .models.mlp import MetadataMLP
from .runs import atomic_write_json, read_part_tables, write_part_tables
from .schema import LABEL, SPLIT, feature_set
from .torchdata import FeatureScaler, choose_batches
from .train import batch_options, fit, predict, seed_everything

KINDS = ("mlp", "image", "both")
EMBED_PREFIX = "emb_"
PROBA_PREFIX = "p_"  # the calibrated probability columns of the core predictions table
COMPOSITION_METHODS = ("cc", "acc", "em")  # raw counts, then the two prior-shift corrections


@dataclass(frozen=True)
class ClassifierOutputs:
    """One trained classifier's logits (and embeddings) for the labelled part and the core."""

    name: str
    classes: list[str]
    labelled_logits: pd.DataFrame
    core_logits: pd.DataFrame | None
    labelled_embedding: pd.DataFrame | None = None
    core_embedding: pd.DataFrame | None = None
    history: pd.DataFrame | None = None

    def proba(self, split: str, table: pd.DataFrame, temperature: float = 1.0) -> pd.DataFrame:
        """Softmax probabilities (optionally temperature-scaled) of one split of the labelled table."""
        ids = split_ids(table, split)
        return _softmax_frame(self.labelled_logits.loc[ids], temperature)

    def core_proba(self, temperature: float = 1.0) -> pd.DataFrame:
        """Softmax probabilities of the core particles."""
        if self.core_logits is None:
            raise ValueError(f"{self.name}: this dataset has no core part")
        return _softmax_frame(self.core_logits, temperature)


def _softmax_frame(logits: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Row-wise softmax of a logits frame, same index and columns."""
    return pd.DataFrame(softmax(logits.to_numpy() / temperature, axis=1), index=logits.index, columns=logits.columns)


def split_ids(table: pd.DataFrame, split: str) -> pd.Index:
    """Particle ids of one split (train/val/test)."""
    ids = table.index[table[SPLIT] == split]
    if not len(ids):
        raise ValueError(f"the {split!r} split is empty; check val_fraction/test_fraction")
    return ids


def class_keys(bundle: DatasetBundle, exclude: tuple[str, ...] = ()) -> list[str]:
    """The classes a model predicts: manifest order, those present in the training split, minus ``exclude``."""
    present = set(bundle.train.table.loc[bundle.train.table[SPLIT] == "train", LABEL]) - set(exclude)
    return [k for k in bundle.classes if k in present] + sorted(present - set(bundle.classes))


def build_torch_classifier(kind: str, n_classes: int, cfg: TrainConfig) -> Any:
    """The study's networks: NN_META (``mlp``), CNN_IMG (``image``), CNN_BOTH (``both``), fed ``cfg.metadata_features``."""
    n_features = len(feature_set(cfg.metadata_features))
    if kind == "mlp":
        return MetadataMLP(n_features, n_classes)
    if kind in ("image", "both"):
        return ParticleCNN(n_classes, n_features=n_features if kind == "both" else 0,
                           weights=getattr(cfg, "weights", "none"), flat_field=cfg.flat_field)
    raise ValueError(f"unknown classifier kind {kind!r}; choose one of {KINDS}")


def fit_torch_classifier(
    bundle: DatasetBundle, cfg: TrainConfig, kind: str, out_dir: Path, *, exclude: tuple[str, ...] = (),
    name: str = "", progress: bool = True,
) -> ClassifierOutputs:
    """Train one torch classifier on the train split (early stopping on val) and predict every particle.

    ``exclude``: classes left out of training (leave-one-class-out); their particles are still predicted.
    """
    table = bundle.train.table
    classes = class_keys(bundle, exclude)
    scaler = FeatureScaler(columns=feature_set(cfg.metadata_features)).fit(table)
    features = scaler.transform(table)
    images = None if kind == "mlp" else bundle.train.images
    known = table[LABEL].isin(classes).to_numpy()
    labels = np.full(len(table), -1, dtype=np.int64)
    labels[known] = ev.label_codes(table.loc[known, LABEL], classes)
    rows = {s: np.flatnonzero((table[SPLIT] == s).to_numpy() & known) for s in ("train", "val")}
    common = batch_options(cfg, progress)
    train_b = choose_batches(images, rows["train"], labels, features, shuffle=True, **common)
    val_b = choose_batches(images, rows["val"], labels, features, shuffle=False, **common)
    seed_everything(cfg.seed)  # the initial weights too: torch seeds itself at random when a kernel starts
    model = build_torch_classifier(kind, len(classes), cfg)
    history = fit(model, train_b, val_b, cfg=cfg, out_dir=out_dir, task="classify", progress=progress)
    atomic_write_json(out_dir / "preprocessing.json", {"classes": classes, "scaler": scaler.state_dict()})
    every = choose_batches(images, np.arange(len(table)), None, features, shuffle=False, **common)
    logits, emb = predict(model, every, progress=progress)
    core_logits = core_emb = None
    if bundle.core is not None:
        core_images = None if kind == "mlp" else bundle.core.images
        core_b = choose_batches(core_images, np.arange(len(bundle.core.table)), None,
                                scaler.transform(bundle.core.table), shuffle=False, **common)
        core_l, core_e = predict(model, core_b, progress=progress)
        core_logits, core_emb = _frame(core_l, bundle.core.table.index, classes), _embedding(core_e, bundle.core.table.index)
    return ClassifierOutputs(name or kind, classes, _frame(logits, table.index, classes), core_logits,
                             _embedding(emb, table.index), core_emb, history.frame)


def fit_bdt(bundle: DatasetBundle, cfg: MetadataConfig, out_dir: Path, *, progress: bool = True) -> tuple[BDTClassifier, ClassifierOutputs, pd.DataFrame | None]:
    """XGBoost on ``cfg.metadata_features``: optional randomized CV search, then a fit with early stopping on val."""
    table = bundle.train.table
    classes = class_keys(bundle)
    columns = list(feature_set(cfg.metadata_features))
    train = table.loc[split_ids(table, "train")]
    train = train[train[LABEL].isin(classes)]
    val = table.loc[split_ids(table, "val")]
    val = val[val[LABEL].isin(classes)]
    X, y = train[columns], train[LABEL]
    model = BDTClassifier(eta=cfg.eta, max_depth=cfg.max_depth, n_estimators=cfg.n_estimators,
                          early_stopping_rounds=cfg.early_stopping_rounds, device=cfg.device, seed=cfg.seed,
                          features=columns)
    results = None
    if cfg.search_iterations > 0:
        best, results = search(X, y, n_iter=cfg.search_iterations, cv=cfg.cv_folds, seed=cfg.seed, base=model,
                               progress=progress)
        model.set_params(**best)
    model.fit(X, y, eval_set=(val[columns], val[LABEL]))
    model.save(out_dir / "bdt.json")
    outputs = ClassifierOutputs(
        "bdt", [str(c) for c in model.classes_], _log_proba(model, table),
        _log_proba(model, bundle.core.table) if bundle.core is not None else None,
    )
    return model, outputs, results


def _log_proba(model: BDTClassifier, table: pd.DataFrame) -> pd.DataFrame:
    """XGBoost's probabilities as logits (log p), so every model is calibrated and scored the same way."""
    proba = model.predict_proba_frame(table[list(model.feature_names_in_)])
    return np.log(proba.clip(lower=1e-12))


def _frame(values: np.ndarray, index: pd.Index, classes: list[str]) -> pd.DataFrame:
    """Logits as a DataFrame keyed by particle id, one column per class."""
    return pd.DataFrame(values, index=index, columns=classes)


def _embedding(values: np.ndarray, index: pd.Index) -> pd.DataFrame:
    """An embedding as a DataFrame keyed by particle id with columns emb_00, emb_01, ..."""
    return pd.DataFrame(values, index=index, columns=[f"{EMBED_PREFIX}{i:02d}" for i in range(values.shape[1])])


def evaluate_split(outputs: ClassifierOutputs, table: pd.DataFrame, split: str = "test", *,
                   temperature: float = 1.0, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """Every metric of one classifier on one labelled split (known classes only)."""
    proba = outputs.proba(split, table, temperature)
    y = table.loc[proba.index, LABEL]
    keep = y.isin(outputs.classes).to_numpy()
    return ev.evaluate(y[keep], proba[keep], outputs.classes, n_boot=n_boot, seed=seed)


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
    scaler = ev.TemperatureScaler().fit(outputs.labelled_logits.loc[val], table.loc[val, LABEL], outputs.classes)
    t = scaler.temperature_
    y = table.loc[split_ids(table, "test"), LABEL]
    probas = {"uncalibrated": outputs.proba("test", table), f"temperature {t:.2f}": outputs.proba("test", table, t)}
    eces = {name: ev.expected_calibration_error(p, y, n_bins) for name, p in probas.items()}
    curves = {f"{name} (ECE {eces[name]:.3f})": ev.reliability_curve(p, y, n_bins) for name, p in probas.items()}
    before, after = eces.values()
    return Calibration(t, before, after, curves)


def core_table(outputs: ClassifierOutputs, temperature: float, thresholds: pd.Series) -> pd.DataFrame:
    """Per core particle: calibrated probabilities, predicted class, max probability, unassigned flag, embedding."""
    proba = outputs.core_proba(temperature)
    pred, unassigned = ev.apply_thresholds(proba, thresholds)
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
    return ev.row_normalise(ev.confusion_counts(table.loc[val, LABEL], pred, outputs.classes))


def _composition_options(outputs: ClassifierOutputs, table: pd.DataFrame) -> dict[str, Any]:
    """What the corrections need: the training priors (EM) and the validation confusion rates (adjusted count)."""
    return {"train_priors": train_priors(outputs.classes, table), "confusion_rates": confusion_rates(outputs, table)}


def compositions(outputs: ClassifierOutputs, table: pd.DataFrame, temperature: float, *, n_boot: int,
                 seed: int) -> dict[str, pd.DataFrame]:
    """Core composition by classify-and-count, adjusted count and EM prior adjustment, with bootstrap intervals.

    The intervals resample the core's particles; the validation confusion rates of the adjusted count stay fixed.
    """
    proba, options = outputs.core_proba(temperature), _composition_options(outputs, table)
    return {method: quantify.bootstrap_composition(proba, method, n_boot=n_boot, seed=seed, **options)
            for method in COMPOSITION_METHODS}


def sample_errors(outputs: ClassifierOutputs, table: pd.DataFrame, temperature: float, samples: pd.Series,
                  truth: pd.Series) -> pd.DataFrame:
    """Per core sample: each method's mean absolute error per class against the truth, and its particle count.

    Each depth sample has a composition of its own (an ash layer, a dusty stretch), so each has its own prior shift.
    """
    proba, options = outputs.core_proba(temperature), _composition_options(outputs, table)
    samples = samples.reindex(proba.index)
    by_sample = {method: quantify.composition_by_group(proba, samples, method, progress=False, **options)
                 for method in COMPOSITION_METHODS}
    return quantify.group_errors(by_sample, truth, samples).join(samples.value_counts().rename("n_particles"))


def comparison_table(metrics: dict[str, Any], tests: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The study's slide: metadata models (from notebook 01's metrics) against the image models, test split."""
    rows = {f"{name.upper()} (metadata)": v for name, v in metrics.get("01_metadata", {}).items()}
    rows |= {f"CNN ({'images + metadata' if v == 'both' else 'images'})": r for v, r in tests.items()}
    return ev.compare_models(rows)


def best_variant(outputs: dict[str, ClassifierOutputs], table: pd.DataFrame) -> str:
    """The variant with the highest validation accuracy (the test split stays untouched by the choice)."""
    return max(outputs, key=lambda v: evaluate_split(outputs[v], table, "val")["accuracy"])


def core_accuracy_drop(outputs: ClassifierOutputs, test: dict[str, Any], bundle: DatasetBundle) -> Any:
    """Accuracy on the core's known-class particles against the test split (None without a truth file)."""
    known = _core_known(outputs, bundle)
    if known is None:
        return None
    truth, pred = known
    return domain_drop(test["accuracy"], float((pred == truth).mean()), domain="core (known classes)")


def _core_known(outputs: ClassifierOutputs, bundle: DatasetBundle) -> tuple[pd.Series, pd.Series] | None:
    """True and predicted class of the core particles whose true class the model knows (None without truth)."""
    if bundle.truth is None or outputs.core_logits is None:
        return None
    truth = bundle.truth.reindex(outputs.core_logits.index)
    known = truth.isin(outputs.classes).to_numpy()
    return truth[known], outputs.core_logits[known].idxmax(axis=1)


def core_recall_table(outputs: ClassifierOutputs, test: dict[str, Any], bundle: DatasetBundle,
                      warn_drop: float = 0.10) -> pd.DataFrame | None:
    """Per class: recall on the test split and on the core's truth, and a flag where the core loses > ``warn_drop``.

    An average accuracy can hide one class that the core's acquisition shift breaks; this table does not.
    """
    known = _core_known(outputs, bundle)
    if known is None:
        return None
    core = ev.classification_report_df(*known, outputs.classes)
    table = pd.DataFrame({"test_recall": test["per_class"]["recall"], "core_recall": core["recall"],
                          "core_support": core["support"]})
    table["drop"] = table["test_recall"] - table["core_recall"]
    table["warning"] = table["drop"] > warn_drop
    return table


def cnn_metrics(tests: dict[str, dict[str, Any]], best: str, calibration: Calibration, coverage: pd.DataFrame,
                probe: Any, core_drop: Any, core_recall: pd.DataFrame | None, errors: pd.DataFrame | None,
                per_sample: pd.DataFrame | None = None) -> dict[str, Any]:
    """Everything notebook 02 reports, as plain values for metrics.json."""
    metrics: dict[str, Any] = {v: ev.metric_scalars(r) for v, r in tests.items()}
    metrics["core_model"] = best
    metrics["calibration"] = {"temperature": calibration.temperature, "ece_before": calibration.ece_before,
                              "ece_after": calibration.ece_after}
    metrics["thresholds"] = coverage.reset_index().to_dict(orient="records")
    metrics["session_probe"] = probe.summary()
    if core_drop is not None:
        metrics["core_accuracy"] = {"test": core_drop.reference, "core": core_drop.shifted, "warning": core_drop.warning}
    if core_recall is not None:
        metrics["core_recall"] = core_recall.to_dict(orient="index")
    if errors is not None:
        metrics["composition_mae"] = errors.filter(like="_abs_error").mean().to_dict()
    if per_sample is not None:
        metrics["composition_mae_per_sample"] = per_sample[list(COMPOSITION_METHODS)].mean().to_dict()
    return metrics


def save_outputs(outputs: ClassifierOutputs, run_dir: Path) -> dict[str, Path]:
    """Write logits (``logit_<class>``) + embeddings of the labelled part and the core as Parquet tables."""
    return write_part_tables(run_dir, outputs.name, {
        "labelled": _logits_and_embedding(outputs.labelled_logits, outputs.labelled_embedding),
        "core": _logits_and_embedding(outputs.core_logits, outputs.core_embedding),
    })


def _logits_and_embedding(logits: pd.DataFrame | None, emb: pd.DataFrame | None) -> pd.DataFrame | None:
    """One table of prefixed logits and the embedding columns (None when there are no logits)."""
    if logits is None:
        return None
    frame = logits.add_prefix("logit_")
    return frame.join(emb) if emb is not None else frame


def load_outputs(run_dir: Path, name: str) -> ClassifierOutputs:
    """Read back what :func:`save_outputs` wrote, so later notebooks reuse a model's outputs without retraining."""
    tables = read_part_tables(run_dir, name)
    split = {part: _split_logits(frame) for part, frame in tables.items()}
    (labelled, labelled_emb), (core, core_emb) = split["labelled"], split["core"]
    return ClassifierOutputs(name, list(labelled.columns), labelled, core, labelled_emb, core_emb)


def _split_logits(frame: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Logits (prefix removed) and embedding columns of a saved table."""
    if frame is None:
        return None, None
    logits = frame.filter(like="logit_").rename(columns=lambda c: c.removeprefix("logit_"))
    emb = frame.filter(like=EMBED_PREFIX)
    return logits, emb if len(emb.columns) else None
