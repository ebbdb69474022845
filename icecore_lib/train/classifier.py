"""Any classifier trained on a dataset bundle's split, then every particle predicted: one shape for all of them.

Every classifier (XGBoost, metadata MLP, ResNet18 with or without metadata) ends as one
:class:`ClassifierOutputs`: logits and 40-unit embeddings for the labelled part and the core, as DataFrames
keyed by particle id, saved as the run's ``outputs`` artefact. Evaluation, calibration and composition
(notebooks 01, 02, 05) work on those, whatever the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from ..config import MetadataConfig, TrainConfig
from ..data.dataset import DatasetBundle
from ..data.pack import Packed
from ..data.splits import split_ids, stratified_subset
from ..evaluate import evaluate, label_codes
from ..files import atomic_write_json
from ..models.bdt import BDTClassifier, search
from ..models.cnn import ParticleCNN
from ..models.mlp import MetadataMLP
from ..models.scaler import FeatureScaler
from ..nn.batches import batch_options, choose_batches
from ..nn.checkpoint import load_weights
from ..nn.device import seed_everything
from ..nn.loop import BEST_FILE, fit, predict
from ..run.artifacts import Run
from ..schema import LABEL, SPLIT, feature_set

KINDS = ("mlp", "image", "both")
PREPROCESSING_FILE = "preprocessing.json"  # beside a torch classifier's weights: its class order and metadata scaler
EMBED_PREFIX = "emb_"


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

    def save(self, run: Run) -> dict[str, Path]:
        """Write logits (``logit_<class>``) + embeddings of the labelled part and the core (artefact ``outputs``)."""
        return run.write_parts("outputs", {
            "labelled": _logits_and_embedding(self.labelled_logits, self.labelled_embedding),
            "core": _logits_and_embedding(self.core_logits, self.core_embedding),
        }, model=self.name)

    @classmethod
    def load(cls, run: Run, name: str) -> ClassifierOutputs:
        """Read back what :meth:`save` wrote, so later notebooks reuse a model's outputs without retraining."""
        split = {part: _split_logits(frame) for part, frame in run.read_parts("outputs", model=name).items()}
        (labelled, labelled_emb), (core, core_emb) = split["labelled"], split["core"]
        return cls(name, list(labelled.columns), labelled, core, labelled_emb, core_emb)


def _softmax_frame(logits: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Row-wise softmax of a logits frame, same index and columns."""
    return pd.DataFrame(softmax(logits.to_numpy() / temperature, axis=1), index=logits.index, columns=logits.columns)


def class_keys(bundle: DatasetBundle, exclude: tuple[str, ...] = ()) -> list[str]:
    """The classes a model predicts: manifest order, those present in the training split, minus ``exclude``."""
    present = set(bundle.train.table.loc[bundle.train.table[SPLIT] == "train", LABEL]) - set(exclude)
    return [k for k in bundle.classes if k in present] + sorted(present - set(bundle.classes))


def build_torch_classifier(kind: str, n_classes: int, cfg: TrainConfig, weights: str | None = None) -> Any:
    """The study's networks: NN_META (``mlp``), CNN_IMG (``image``), CNN_BOTH (``both``), fed ``cfg.metadata_features``.

    ``weights`` (default ``cfg.weights``): the ResNet18's initial weights; "none" where trained ones are loaded next.
    """
    n_features = len(feature_set(cfg.metadata_features))
    if kind == "mlp":
        return MetadataMLP(n_features, n_classes)
    if kind in ("image", "both"):
        return ParticleCNN(n_classes, n_features=n_features if kind == "both" else 0,
                           weights=weights or getattr(cfg, "weights", "none"), flat_field=cfg.flat_field)
    raise ValueError(f"unknown classifier kind {kind!r}; choose one of {KINDS}")


def fit_torch_classifier(
    bundle: DatasetBundle, cfg: TrainConfig, kind: str, out_dir: Path, *, exclude: tuple[str, ...] = (),
    name: str = "", progress: bool = True, train_fraction: float = 1.0, score_core: bool = True,
) -> ClassifierOutputs:
    """Train one torch classifier on the train split (early stopping on val) and predict every labelled particle
    and (``score_core``) every core particle.

    ``exclude``: classes left out of training (leave-one-class-out); their particles are still predicted.
    ``train_fraction``: the share of each class's training rows it learns from (stratified, seeded).
    """
    table = bundle.train.table
    classes = class_keys(bundle, exclude)
    scaler = FeatureScaler(columns=feature_set(cfg.metadata_features)).fit(table)
    features = scaler.transform(table)
    images = None if kind == "mlp" else bundle.train.images
    known = table[LABEL].isin(classes).to_numpy()
    labels = np.full(len(table), -1, dtype=np.int64)
    labels[known] = label_codes(table.loc[known, LABEL], classes)
    rows = {s: np.flatnonzero((table[SPLIT] == s).to_numpy() & known) for s in ("train", "val")}
    rows["train"] = stratified_subset(rows["train"], labels[rows["train"]], train_fraction, cfg.seed)
    common = batch_options(cfg, progress)
    train_b = choose_batches(images, rows["train"], labels, features, shuffle=True, **common)
    val_b = choose_batches(images, rows["val"], labels, features, shuffle=False, **common)
    seed_everything(cfg.seed)  # the initial weights too: torch seeds itself at random when a kernel starts
    model = build_torch_classifier(kind, len(classes), cfg)
    history = fit(model, train_b, val_b, cfg=cfg, out_dir=out_dir, task="classify", progress=progress)
    atomic_write_json(out_dir / PREPROCESSING_FILE, {"classes": classes, "scaler": scaler.state_dict()})
    trained = TrainedClassifier(kind, model, classes, scaler)
    logits, emb = trained.predict(bundle.train, cfg, progress=progress)
    core_logits, core_emb = None, None
    if bundle.core is not None and score_core:
        core_logits, core_emb = trained.predict(bundle.core, cfg, progress=progress)
    return ClassifierOutputs(name or kind, classes, logits, core_logits, emb, core_emb, history.frame)


@dataclass(frozen=True)
class TrainedClassifier:
    """A trained torch classifier with what its inputs need: the class order and the metadata scaler."""

    kind: str
    model: Any
    classes: list[str]
    scaler: FeatureScaler

    def predict(self, packed: Packed, cfg: TrainConfig, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Logits and 40-unit embedding of every particle of a packed part, keyed by particle id.

        Batches as in training (``cfg.batch_size``, ``cfg.device``), so a part predicted again gives the same numbers.
        """
        images = None if self.kind == "mlp" else packed.images
        batches = choose_batches(images, np.arange(len(packed.table)), None, self.scaler.transform(packed.table),
                                 shuffle=False, **batch_options(cfg, progress))
        logits, emb = predict(self.model, batches, progress=progress, precision=cfg.precision)
        return _frame(logits, packed.table.index, self.classes), _embedding(emb, packed.table.index)

    @classmethod
    def load(cls, out_dir: Path, kind: str, cfg: TrainConfig) -> TrainedClassifier:
        """The model :func:`fit_torch_classifier` left in ``out_dir`` (best weights, classes, scaler): no training."""
        for needed in (BEST_FILE, PREPROCESSING_FILE):
            if not (out_dir / needed).is_file():
                raise FileNotFoundError(f"{out_dir / needed} is missing: {out_dir.name} did not finish training")
        preprocessing = json.loads((out_dir / PREPROCESSING_FILE).read_text())
        model = build_torch_classifier(kind, len(preprocessing["classes"]), cfg, weights="none")
        load_weights(model, out_dir / BEST_FILE)
        return cls(kind, model, list(preprocessing["classes"]),
                   FeatureScaler.from_state_dict(preprocessing["scaler"]))


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
    return evaluate(y[keep], proba[keep], outputs.classes, n_boot=n_boot, seed=seed)


def _logits_and_embedding(logits: pd.DataFrame | None, emb: pd.DataFrame | None) -> pd.DataFrame | None:
    """One table of prefixed logits and the embedding columns (None when there are no logits)."""
    if logits is None:
        return None
    frame = logits.add_prefix("logit_")
    return frame.join(emb) if emb is not None else frame


def _split_logits(frame: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Logits (prefix removed) and embedding columns of a saved table."""
    if frame is None:
        return None, None
    logits = frame.filter(like="logit_").rename(columns=lambda c: c.removeprefix("logit_"))
    emb = frame.filter(like=EMBED_PREFIX)
    return logits, emb if len(emb.columns) else None
