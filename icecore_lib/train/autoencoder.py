"""An autoencoder trained without labels, then a reconstruction loss and a latent for every particle.

The autoencoder is trained by the same loop as the classifiers (same checkpoints, same resume), on the
labelled set's training split (optionally without some classes, for leave-one-class-out) or on the core;
its :class:`AEOutputs` are saved as the run's ``outputs`` artefact (notebooks 03, 04; read by 05).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import TrainConfig
from ..data.dataset import DatasetBundle
from ..data.pack import Packed
from ..data.splits import stratified_subset
from ..models.autoencoder import ConvAutoencoder
from ..nn.batches import batch_options, choose_batches
from ..nn.checkpoint import load_weights
from ..nn.device import seed_everything
from ..nn.loop import BEST_FILE, fit, predict
from ..run.artifacts import Run
from ..schema import LABEL, SPLIT

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

    def save(self, run: Run) -> dict[str, Path]:
        """Write the labelled and core tables of loss + latent (artefact ``outputs``)."""
        return run.write_parts("outputs", {"labelled": self.labelled, "core": self.core}, model=self.name)

    @classmethod
    def load(cls, run: Run, latent_dim: int, name: str = "") -> AEOutputs:
        """Read back what :meth:`save` wrote (notebooks 04 and 05 reuse it; nothing is retrained)."""
        name = name or f"ae{latent_dim}"
        tables = run.read_parts("outputs", model=name)
        return cls(name, latent_dim, tables["labelled"], tables["core"])


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
                    train_on: str = "train", exclude: tuple[str, ...] = (), name: str = "", progress: bool = True,
                    train_fraction: float = 1.0, score_core: bool = True) -> tuple[ConvAutoencoder, AEOutputs]:
    """Train one autoencoder and score every particle of the labelled part and (``score_core``) the core.

    ``train_fraction``: the share of the training rows it learns from (by class on the labelled part, seeded).
    """
    part, train_rows, val_rows = training_rows(bundle, train_on, exclude, cfg.seed)
    strata = bundle.train.table[LABEL].to_numpy()[train_rows] if part == "train" else np.zeros(len(train_rows))
    train_rows = stratified_subset(train_rows, strata, train_fraction, cfg.seed)
    images = bundle.parts()[part].images
    common = batch_options(cfg, progress)
    seed_everything(cfg.seed)  # the initial weights too: torch seeds itself at random when a kernel starts
    model = ConvAutoencoder(images.shape[1], latent_dim, flat_field=cfg.flat_field)
    history = fit(model, choose_batches(images, train_rows, shuffle=True, **common),
                  choose_batches(images, val_rows, shuffle=False, **common),
                  cfg=cfg, out_dir=out_dir, task="reconstruct", progress=progress)
    tables = {name: score_part(model, packed, cfg, progress) for name, packed in bundle.parts().items()
              if name != "core" or score_core}
    return model, AEOutputs(name or f"ae{latent_dim}", latent_dim, tables["train"], tables.get("core"), history.frame)


def load_autoencoder(out_dir: Path, image_size: int, latent_dim: int, cfg: TrainConfig) -> ConvAutoencoder:
    """The autoencoder :func:`fit_autoencoder` left in ``out_dir`` (its best weights), without training."""
    if not (out_dir / BEST_FILE).is_file():
        raise FileNotFoundError(f"{out_dir / BEST_FILE} is missing: {out_dir.name} did not finish training")
    model = ConvAutoencoder(image_size, latent_dim, flat_field=cfg.flat_field)
    load_weights(model, out_dir / BEST_FILE)
    return model


def score_part(model: ConvAutoencoder, packed: Packed, cfg: TrainConfig, progress: bool = True) -> pd.DataFrame:
    """Reconstruction loss and latent of every particle of a packed part, keyed by particle id."""
    index = packed.table.index
    batches = choose_batches(packed.images, np.arange(len(index)), shuffle=False, **batch_options(cfg, progress))
    loss, latent = predict(model, batches, progress=progress, precision=cfg.precision)
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
