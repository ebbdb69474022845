"""Leave-one-class-out folds: trained in notebook 04 without a class, read again in notebook 05.

Each fold's image CNN and autoencoder never see the held-out class; its particles are still embedded, and how
well they stand apart in each space is notebook 04's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..config import EmbedConfig
from ..data.dataset import DatasetBundle
from ..embed.cluster import holdout_separation
from ..embed.umap import UMAPReducer
from ..run.artifacts import Run
from ..schema import LABEL, SPLIT
from ..train.autoencoder import LATENT_PREFIX, AEOutputs, fit_autoencoder
from ..train.classifier import ClassifierOutputs, fit_torch_classifier


@dataclass(frozen=True)
class HoldoutRun:
    """The CNN and autoencoder trained without one class, and their outputs for every particle."""

    holdout: str
    cnn: ClassifierOutputs
    ae: AEOutputs


def train_without(bundle: DatasetBundle, cfg: EmbedConfig, holdout: str, run: Run, *,
                  progress: bool = True) -> HoldoutRun:
    """Train the image CNN and the autoencoder on the other classes (same loop, same settings)."""
    if holdout not in set(bundle.train.table[LABEL]):
        raise ValueError(f"holdout class {holdout!r} is not in the labelled data; classes: {sorted(bundle.classes)}")
    cnn = fit_torch_classifier(bundle, cfg, "image", run.file("model", model=f"loco_{holdout}/cnn"),
                                        exclude=(holdout,), name=f"loco_{holdout}_cnn", progress=progress)
    _, ae = fit_autoencoder(bundle, cfg, cfg.ae_latent, run.file("model", model=f"loco_{holdout}/ae"),
                                       exclude=(holdout,), name=f"loco_{holdout}_ae{cfg.ae_latent}", progress=progress)
    return HoldoutRun(holdout, cnn, ae)


def holdout_spaces(run: HoldoutRun) -> dict[str, pd.DataFrame]:
    """The labelled particles in each space of a holdout run (CNN penultimate layer, AE latent)."""
    return {"cnn": run.cnn.labelled_embedding, "ae": run.ae.labelled.filter(like=LATENT_PREFIX)}


def separation(run: HoldoutRun, table: pd.DataFrame, cfg: EmbedConfig) -> tuple[list[dict[str, Any]], dict[str, pd.DataFrame]]:
    """One table row per space (kNN purity, distance AUROC, HDBSCAN purity/ARI) and each space's 2-D map."""
    known_train = ((table[SPLIT] == "train") & (table[LABEL] != run.holdout)).to_numpy()
    rows, maps = [], {}
    for space, X in holdout_spaces(run).items():
        Y = UMAPReducer(cfg.n_neighbors, cfg.min_dist, random_state=cfg.seed).fit_transform(X)
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


def separation_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """All holdout rows as one table indexed by (holdout class, space)."""
    return pd.DataFrame(rows).set_index(["holdout_class", "space"]).sort_index()
