"""Leave-one-class-out (notebook 04): train without a class, embed all, measure whether the class stands apart."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import autoencode, classify
from .cluster import holdout_separation
from .config import EmbedConfig
from .data import DatasetBundle
from .embed import UMAPReducer
from .schema import LABEL, SPLIT


@dataclass(frozen=True)
class HoldoutRun:
    """The CNN and autoencoder trained without one class, and their outputs for every particle."""

    holdout: str
    cnn: classify.ClassifierOutputs
    ae: autoencode.AEOutputs


def train_without(bundle: DatasetBundle, cfg: EmbedConfig, holdout: str, models_dir: Path, *,
                  progress: bool = True) -> HoldoutRun:
    """Train the image CNN and the autoencoder on the other classes (same loop, same settings)."""
    if holdout not in set(bundle.train.table[LABEL]):
        raise ValueError(f"holdout class {holdout!r} is not in the labelled data; classes: {sorted(bundle.classes)}")
    cnn = classify.fit_torch_classifier(bundle, cfg, "image", models_dir / f"loco_{holdout}" / "cnn",
                                        exclude=(holdout,), name=f"loco_{holdout}_cnn", progress=progress)
    _, ae = autoencode.fit_autoencoder(bundle, cfg, cfg.ae_latent, models_dir / f"loco_{holdout}" / "ae",
                                       exclude=(holdout,), name=f"loco_{holdout}_ae{cfg.ae_latent}", progress=progress)
    return HoldoutRun(holdout, cnn, ae)


def holdout_spaces(run: HoldoutRun) -> dict[str, pd.DataFrame]:
    """The labelled particles in each space of a holdout run (CNN penultimate layer, AE latent)."""
    return {"cnn": run.cnn.labelled_embedding, "ae": run.ae.labelled.filter(like=autoencode.LATENT_PREFIX)}


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


def save(run: HoldoutRun, run_dir: Path) -> None:
    """Write the holdout models' per-particle outputs (notebook 05 scores novelty from them)."""
    classify.save_outputs(run.cnn, run_dir)
    autoencode.save_outputs(run.ae, run_dir)


def load(run_dir: Path, holdout: str, ae_latent: int) -> HoldoutRun:
    """Read a holdout run back from the run directory."""
    return HoldoutRun(holdout, classify.load_outputs(run_dir, f"loco_{holdout}_cnn"),
                      autoencode.load_outputs(run_dir, ae_latent, f"loco_{holdout}_ae{ae_latent}"))


def loco_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """All holdout rows as one table indexed by (holdout class, space)."""
    return pd.DataFrame(rows).set_index(["holdout_class", "space"]).sort_index()
