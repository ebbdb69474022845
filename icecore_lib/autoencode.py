"""Autoencoder workflow of notebook 03: train without labels, then a reconstruction loss and a latent per particle.

The autoencoder is trained by the same loop as the classifiers (same checkpoints, same resume), on the
labelled set's training split (optionally without some classes, for leave-one-class-out) or on the core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

from .config import TrainConfig
from .data import DatasetBundle
from .models.autoencoder import ConvAutoencoder
from .runs import read_part_tables, write_part_tables
from .schema import LABEL, NEW_CLASS, SPLIT
from .torchdata import choose_batches
from .train import batch_options, fit, predict, seed_everything

RECON = "recon"
LATENT_PREFIX = "lat_"


@dataclass(frozen=True)
class AEOutputs:
    """Per particle: reconstruction loss (``recon``) and latent vector (``lat_00`` ...), labelled part and core."""

    name: str  # table name stem, e.g. ae64 (or loco_dust_ae64 for a leave-one-class-out model)
    latent_dim: int
    labelled: pd.DataFrame
    core: pd.DataFrame | None
    history: pd.DataFrame | None = None


def training_rows(bundle: DatasetBundle, train_on: str, exclude: tuple[str, ...] = (), seed: int = 0,
                  val_fraction: float = 0.15) -> tuple[str, np.ndarray, np.ndarray]:
    """Which part the autoencoder learns from and its train/val rows (labels are never used, only excluded)."""
    if train_on == "train":
        table = bundle.train.table
        keep = ~table[LABEL].isin(exclude).to_numpy()
        return "train", np.flatnonzero((table[SPLIT] == "train").to_numpy() & keep), \
            np.flatnonzero((table[SPLIT] == "val").to_numpy() & keep)
    if train_on == "core":
        if bundle.core is None:
            raise ValueError("train_on='core' but this dataset has no core part")
        order = np.random.default_rng(seed).permutation(len(bundle.core.table))
        n_val = max(1, int(round(val_fraction * len(order))))
        return "core", np.sort(order[n_val:]), np.sort(order[:n_val])
    raise ValueError(f"train_on must be 'train' or 'core', got {train_on!r}")


def fit_autoencoder(bundle: DatasetBundle, cfg: TrainConfig, latent_dim: int, out_dir: Path, *,
                    train_on: str = "train", exclude: tuple[str, ...] = (), name: str = "", progress: bool = True
                    ) -> tuple[ConvAutoencoder, AEOutputs]:
    """Train one autoencoder and score every particle of the labelled part and the core."""
    part, train_rows, val_rows = training_rows(bundle, train_on, exclude, cfg.seed)
    images = bundle.parts()[part].images
    common = batch_options(cfg, progress)
    seed_everything(cfg.seed)  # the initial weights too: torch seeds itself at random when a kernel starts
    model = ConvAutoencoder(images.shape[1], latent_dim, flat_field=cfg.flat_field)
    history = fit(model, choose_batches(images, train_rows, shuffle=True, **common),
                  choose_batches(images, val_rows, shuffle=False, **common),
                  cfg=cfg, out_dir=out_dir, task="reconstruct", progress=progress)
    tables = {name: _score(model, packed.images, packed.table.index, common)
              for name, packed in bundle.parts().items()}
    return model, AEOutputs(name or f"ae{latent_dim}", latent_dim, tables["train"], tables.get("core"), history.frame)


def _score(model: ConvAutoencoder, images: np.ndarray, index: pd.Index, common: dict) -> pd.DataFrame:
    """Reconstruction loss and latent of every image, keyed by particle id."""
    loss, latent = predict(model, choose_batches(images, np.arange(len(index)), shuffle=False, **common),
                           progress=common["progress"])
    columns = [f"{LATENT_PREFIX}{i:02d}" for i in range(latent.shape[1])]
    return pd.DataFrame(latent, index=index, columns=columns).assign(**{RECON: loss})[[RECON, *columns]]


@torch.no_grad()
def reconstruct(model: ConvAutoencoder, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Reconstructions of some images as (n, S, S) float arrays on the 0-255 scale, for figures."""
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(images[np.sort(rows)]), device=device).float().unsqueeze(1)
    order = np.argsort(np.argsort(rows))
    return model.reconstruct(x).squeeze(1).clamp(0, 255).cpu().numpy()[order]


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


def save_outputs(out: AEOutputs, run_dir: Path) -> None:
    """Write the per-particle tables as Parquet in the run directory."""
    write_part_tables(run_dir, out.name, {"labelled": out.labelled, "core": out.core})


def load_outputs(run_dir: Path, latent_dim: int, name: str = "") -> AEOutputs:
    """Read back what :func:`save_outputs` wrote (notebooks 04 and 05 reuse it; nothing is retrained)."""
    name = name or f"ae{latent_dim}"
    tables = read_part_tables(run_dir, name)
    return AEOutputs(name, latent_dim, tables["labelled"], tables["core"])
