"""The model card of a run that trains: which data, which classes and features, which models, how good, which versions.

Notebook 02 writes ``model_card.json`` when its classifier is ready (03 and 05 add their sections), with the
reference particles' table beside it (label, split and features of every labelled particle: the training
priors, confusion rates, drift reference and metadata space ``icecore apply`` needs without the training data).
``icecore apply`` reads the card, refuses a new dataset that does not fit it (:func:`check_fits`) and keeps a
copy in its own run directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.pack import Packed
from ..files import atomic_write_json, jsonable
from ..images.sources import sha256_file
from ..schema import FLOWCAM_FEATURES, LABEL, SAMPLE, SESSION, SPLIT
from .artifacts import Run
from .rundir import environment_versions

CARD_FILE = "model_card.json"
CARD_VERSION = 1
# Besides the features: what the reference table keeps of each labelled particle.
REFERENCE_COLUMNS = (LABEL, SPLIT, SESSION, SAMPLE)


class CardMismatch(ValueError):
    """A dataset the card's models do not fit (other classes, missing features): the message says why."""


def data_fingerprint(packed: Packed) -> dict[str, Any]:
    """What identifies a packed part: its pack key, particle count and the sha256 of every CSV it was read from."""
    meta = json.loads((packed.path / "meta.json").read_text())
    return {"pack_key": packed.key, "particles": len(packed.table), "csv_sha256": meta["csvs"],
            "images": meta["images"]}


def write_model_card(run: Run, *, dataset: str, parts: Mapping[str, Packed], classes: Mapping[str, str],
                     classifier: Mapping[str, Any], metrics: Mapping[str, Any]) -> Path:
    """Write the run's card (and its reference particles' table) for the classifier notebook 02 chose.

    ``classifier``: its model name, folder, kind, image size, metadata features, temperature and thresholds.
    """
    train = parts["train"].table
    run.write("reference_particles", train[[c for c in (*REFERENCE_COLUMNS, *FLOWCAM_FEATURES) if c in train]])
    weights = run.path / classifier["folder"] / "best.safetensors"
    card = {
        "card_version": CARD_VERSION,
        "id": _card_id(run, weights),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "training_run": str(run.path.resolve()),
        "dataset": {"name": dataset, "parts": {name: data_fingerprint(p) for name, p in parts.items()}},
        "classes": {key: classes.get(key, key) for key in classifier["classes"]},
        "features": [c for c in FLOWCAM_FEATURES if c in train],
        "classifier": dict(classifier) | {"weights_sha256": sha256_file(weights)},
        "metrics": dict(metrics),
        "versions": environment_versions(),
    }
    return atomic_write_json(run.path / CARD_FILE, jsonable(card))


def _card_id(run: Run, weights: Path) -> str:
    """A short id naming this card: the run and the exact weights it describes."""
    return hashlib.sha256(f"{run.path.resolve()}\0{sha256_file(weights)}".encode()).hexdigest()[:12]


def read_model_card(run_dir: Path | str) -> dict[str, Any]:
    """A run's card; a run without one says what to run to get it."""
    path = Path(run_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {run_dir} has no trained classifier to apply. Train one with "
                                "`icecore run` (notebooks 00-02 at least; 03 and 05 add the novelty flags)")
    return json.loads(path.read_text())


def update_model_card(run: Run, section: str, values: Mapping[str, Any]) -> Path:
    """Add or replace one section of the run's card (03: the autoencoder, 05: the novelty scorer)."""
    card = read_model_card(run.path)
    card[section] = jsonable(dict(values))
    return atomic_write_json(run.path / CARD_FILE, card)


def check_fits(card: Mapping[str, Any], classes: Mapping[str, str], table: pd.DataFrame, dataset: str) -> None:
    """Refuse a dataset the card's models do not fit: a class vocabulary of its own, or features they need missing.

    A core-only dataset declares no classes (only "unlabelled"); a dataset that declares classes must know every
    class of the model, else its labels and the model's predictions name different things.
    """
    declared = [k for k in classes if k != "unlabelled"]
    model_classes = list(card["classes"])
    missing_classes = [k for k in model_classes if declared and k not in declared]
    if missing_classes:
        raise CardMismatch(f"dataset {dataset!r} declares the classes {', '.join(declared)}; the model of "
                           f"{card['training_run']} was trained on {', '.join(model_classes)} and "
                           f"{', '.join(missing_classes)} are not among them: these models do not fit this dataset")
    missing = [c for c in _needed_features(card) if c not in table.columns]
    if missing:
        raise CardMismatch(f"dataset {dataset!r} lacks the feature column(s) {', '.join(missing)} that the models of "
                           f"{card['training_run']} read (card {card['id']}): these models do not fit this dataset")


def _needed_features(card: Mapping[str, Any]) -> Sequence[str]:
    """The feature columns a new core must have: the classifier's metadata input and the novelty metadata space."""
    return list(dict.fromkeys([*card["classifier"]["scaler_columns"], *card.get("novelty", {}).get("meta_features", [])]))
