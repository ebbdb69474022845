"""Leave-one-class-out folds: trained in notebook 04 without a class, read again in notebook 05.

Each fold's image CNN and autoencoder never see the held-out class; its particles are still embedded, and how
well they stand apart in each space is notebook 04's table.

Which classes are held out (:func:`plan_holdouts`): ``holdout_classes`` when the labelled data has every one of
them (the defaults name the synthetic twin's ice-core classes), else every class of the data but the largest: a
held-out class stands for a new particle type, a minority in the core, and holding out the largest class would
take most of the training data from its fold's models. A class with fewer than ``MIN_HOLDOUT_TEST`` test
particles is skipped (notebook 05 measures each fold on the test split), and so is every class when fewer than
three are labelled (a fold must still train a classifier on two or more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..config import EmbedConfig
from ..data.dataset import DatasetBundle
from ..embed.cluster import holdout_separation
from ..embed.umap import UMAPReducer
from ..run.artifacts import Run
from ..run.notebook import Skipped
from ..schema import LABEL, SPLIT
from ..train.autoencoder import LATENT_PREFIX, AEOutputs, fit_autoencoder
from ..train.classifier import ClassifierOutputs, fit_torch_classifier

MIN_HOLDOUT_TEST = 5  # test particles a held-out class needs for its fold's novelty metrics
MIN_KNOWN_CLASSES = 2  # classes a fold's classifier is still trained on


@dataclass(frozen=True)
class HoldoutPlan:
    """The classes held out in turn, the rule that chose them, and the chosen ones skipped (with why)."""

    classes: tuple[str, ...]
    rule: str
    skipped: tuple[Skipped, ...]


def plan_holdouts(table: pd.DataFrame, classes: Sequence[str], configured: Sequence[str],
                  min_test: int = MIN_HOLDOUT_TEST) -> HoldoutPlan:
    """Which classes of the labelled ``table`` to hold out (``classes``: the dataset's, in manifest order)."""
    counts = table[LABEL].value_counts()
    present = [c for c in classes if c in counts]
    if configured and all(c in counts for c in configured):
        chosen, rule = list(configured), "the configured holdout_classes"
    else:
        largest = max(present, key=lambda c: counts[c])
        chosen = [c for c in present if c != largest]
        rule = f"every class but the largest ({largest})" + (
            f": the configured holdout_classes ({', '.join(configured)}) are not all classes of this dataset"
            if configured else "")
    test = table.loc[table[SPLIT] == "test", LABEL].value_counts()
    problems = {c: _holdout_problem(len(present), int(test.get(c, 0)), min_test) for c in chosen}
    skipped = tuple(Skipped(f"holding out {c}", *problem) for c, problem in problems.items() if problem is not None)
    return HoldoutPlan(tuple(c for c, problem in problems.items() if problem is None), rule, skipped)


def _holdout_problem(n_classes: int, n_test: int, min_test: int) -> tuple[str, str] | None:
    """Why a class cannot be held out (and what would let it), or None."""
    if n_classes - 1 < MIN_KNOWN_CLASSES:
        return (f"the labelled data has {n_classes} classes: holding one out leaves fewer than {MIN_KNOWN_CLASSES} "
                "to train on", "label a third class to measure how an unseen class stands apart")
    if n_test < min_test:
        return (f"it has {n_test} test particle(s), fewer than {min_test}: too few to measure how it stands apart",
                "label more of its particles")
    return None


@dataclass(frozen=True)
class HoldoutRun:
    """The CNN and autoencoder trained without one class, and their outputs for every particle."""

    holdout: str
    cnn: ClassifierOutputs
    ae: AEOutputs


def train_without(bundle: DatasetBundle, cfg: EmbedConfig, holdout: str, run: Run, *,
                  progress: bool = True) -> HoldoutRun:
    """Train the image CNN and the autoencoder on ``cfg.loco_train_fraction`` of the other classes (same loop).

    The fold's models embed the labelled particles only: notebooks 04 and 05 measure a fold on the labelled splits.
    """
    if holdout not in set(bundle.train.table[LABEL]):
        raise ValueError(f"holdout class {holdout!r} is not in the labelled data; classes: {sorted(bundle.classes)}")
    share = cfg.loco_train_fraction
    cnn = fit_torch_classifier(bundle, cfg, "image", run.file("model", model=f"loco_{holdout}/cnn"),
                               exclude=(holdout,), name=f"loco_{holdout}_cnn", progress=progress, train_fraction=share,
                               score_core=False)
    _, ae = fit_autoencoder(bundle, cfg, cfg.ae_latent, run.file("model", model=f"loco_{holdout}/ae"),
                            exclude=(holdout,), name=f"loco_{holdout}_ae{cfg.ae_latent}", progress=progress,
                            train_fraction=share, score_core=False)
    return HoldoutRun(holdout, cnn, ae)


def holdout_spaces(run: HoldoutRun) -> dict[str, pd.DataFrame]:
    """The labelled particles in each space of a holdout run (CNN penultimate layer, AE latent)."""
    return {"cnn": run.cnn.labelled_embedding, "ae": run.ae.labelled.filter(like=LATENT_PREFIX)}


def umap_reducer(cfg: EmbedConfig) -> UMAPReducer:
    """The umap-learn reducer of every notebook-04 map, from the stage's neighbours, distance, epochs and seed."""
    return UMAPReducer(cfg.n_neighbors, cfg.min_dist, n_epochs=cfg.umap_epochs, random_state=cfg.seed)


def separation(run: HoldoutRun, table: pd.DataFrame, cfg: EmbedConfig) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """One table row per space (kNN purity, distance AUROC, HDBSCAN purity/ARI) and each space's 2-D map."""
    known_train = ((table[SPLIT] == "train") & (table[LABEL] != run.holdout)).to_numpy()
    rows, maps = [], {}
    for space, X in holdout_spaces(run).items():
        Y = umap_reducer(cfg).fit_transform(X)
        row = holdout_separation(X.to_numpy(), table[LABEL].to_numpy(), run.holdout, k=10,
                                 ref_mask=known_train, Y=Y.to_numpy(), min_cluster_size=cfg.min_cluster_size,
                                 seed=cfg.seed)
        rows.append({"space": space, **row})
        maps[space] = Y
    return rows, maps


def save_fold(fold: HoldoutRun, run: Run) -> None:
    """Write the holdout models' per-particle outputs (notebook 05 scores novelty from them)."""
    fold.cnn.save(run)
    fold.ae.save(run)


def load_fold(run: Run, holdout: str, ae_latent: int) -> HoldoutRun:
    """Read a holdout run back from the run directory."""
    return HoldoutRun(holdout, ClassifierOutputs.load(run, f"loco_{holdout}_cnn"),
                      AEOutputs.load(run, ae_latent, f"loco_{holdout}_ae{ae_latent}"))


def holdouts_in_run(run: Run) -> list[str]:
    """The classes notebook 04 held out: the held-out classes of its separation table."""
    return sorted(run.read("loco_separation").index.unique("holdout_class"))


LOCO_INDEX = ["holdout_class", "space"]


def separation_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """All holdout rows as one table indexed by (holdout class, space); empty (same index) when none was held out."""
    if not rows:
        return pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=LOCO_INDEX))
    return pd.DataFrame(rows).set_index(LOCO_INDEX).sort_index()
