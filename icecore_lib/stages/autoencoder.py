"""Notebook 03: the autoencoder's latent sizes compared (reconstruction, kNN accuracy, new-class AUROC).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from ..data.dataset import DatasetBundle
from ..models.autoencoder import ConvAutoencoder
from ..plots.gallery import hardest_reconstructions
from ..plots.training import reconstruction_grid
from ..run.notebook import Stage
from ..schema import LABEL, NEW_CLASS, SPLIT
from ..train.autoencoder import LATENT_PREFIX, RECON, AEOutputs, fit_autoencoder, reconstruct


def latent_comparison(outputs: dict[int, AEOutputs], bundle: DatasetBundle, k: int = 10) -> pd.DataFrame:
    """Latent sizes side by side: test reconstruction loss, kNN accuracy of the latent, new-class AUROC of the loss."""
    table = bundle.train.table
    train, test = (table[SPLIT] == "train").to_numpy(), (table[SPLIT] == "test").to_numpy()
    rows = {}
    for dim, out in outputs.items():
        latent = out.labelled.filter(like=LATENT_PREFIX).to_numpy()
        knn = KNeighborsClassifier(n_neighbors=k).fit(latent[train], table[LABEL].to_numpy()[train])
        row = {"test_recon_mse": float(out.labelled[RECON].to_numpy()[test].mean()),
               "knn_accuracy_test": float(knn.score(latent[test], table[LABEL].to_numpy()[test])),
               "epochs_run": len(out.history) if out.history is not None else None}
        if out.core is not None and bundle.truth is not None:
            novel = (bundle.truth.reindex(out.core.index) == NEW_CLASS).to_numpy()
            if 0 < novel.sum() < len(novel):
                row["new_class_auroc_recon"] = float(roc_auc_score(novel, out.core[RECON]))
        rows[f"latent {dim}"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def train_latents(stage: Stage) -> dict[int, tuple[ConvAutoencoder, AEOutputs]]:
    """One autoencoder per latent size of ``cfg.latent_dims``, on the part ``cfg.train_on`` names."""
    return {dim: fit_autoencoder(stage.bundle, stage.cfg, dim, stage.run.file("model", model=f"ae{dim}"),
                                 train_on=stage.cfg.train_on)
            for dim in stage.cfg.latent_dims}


def reconstructions(stage: Stage, model: ConvAutoencoder, n: int = 8) -> list[Figure]:
    """Originals above reconstructions: a seeded sample of the test split, then of the core (when there is one)."""
    table, rng = stage.table, np.random.default_rng(stage.cfg.seed)
    dim = model.latent_dim
    test = np.flatnonzero((table[SPLIT] == "test").to_numpy())
    test_rows = np.sort(rng.choice(test, size=min(n, len(test)), replace=False))
    images = stage.bundle.train.images
    figures = [reconstruction_grid(images[test_rows], reconstruct(model, images, test_rows),
                                   captions=list(table[LABEL].to_numpy()[test_rows]),
                                   path=stage.figure(f"03_ae{dim}_reconstructions_test.png"))]
    if stage.bundle.core is not None:
        core = stage.bundle.core
        core_rows = np.sort(rng.choice(len(core.table), size=min(n, len(core.table)), replace=False))
        figures.append(reconstruction_grid(core.images[core_rows], reconstruct(model, core.images, core_rows),
                                           path=stage.figure(f"03_ae{dim}_reconstructions_core.png")))
    return figures


def hardest(stage: Stage, outputs: AEOutputs, k: int = 8) -> Figure:
    """The training particles the autoencoder reconstructs worst."""
    labelled = stage.table.join(outputs.labelled[[RECON]])
    return hardest_reconstructions(stage.bundle.train.images, labelled, loss=RECON, k=k,
                                   path=stage.figure("03_hardest_to_reconstruct.png"))


def save(stage: Stage, outputs: dict[int, AEOutputs], comparison: pd.DataFrame) -> None:
    """Every autoencoder's per-particle outputs, and the latent comparison in metrics.json."""
    for out in outputs.values():
        out.save(stage.run)
    stage.run.update_metrics("03_autoencoder", {"latent_comparison": comparison.to_dict(orient="index")})
