"""A dataset ready for the models: a manifest entry (or a lab's folder given by its path) resolved, checked,
packed and split (:func:`load_dataset`), or its core alone to apply trained models to (:func:`load_core`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import StageConfig
from ..schema import LABEL, SPLIT
from .layouts import Imported, import_path
from .manifest import Manifest, ManifestError, ResolvedPart, load_manifest
from .pack import Packed, pack_part
from .relabel import corrected_labels, read_label_review
from .resolve import dataset_classes, resolve_parts
from .splits import packed_split
from .validate import CheckReport, check_part, read_table


@dataclass(frozen=True)
class DatasetBundle:
    """A dataset ready for the models: packed train (with a ``split`` column), packed core, core truth."""

    name: str
    train: Packed
    core: Packed | None
    truth: pd.Series | None  # label of core particles, indexed by particle_id; for evaluation only
    classes: dict[str, str]  # class key -> display name
    preview: Path | None = None  # the synthetic generator's contact sheet, when the data is synthetic

    def parts(self) -> dict[str, Packed]:
        """The packed parts by name (core only when the dataset has one)."""
        return {"train": self.train} | ({"core": self.core} if self.core is not None else {})


def is_path(dataset: str) -> bool:
    """Whether a dataset parameter is a path (has a folder separator, or starts with ~ or .) rather than a name."""
    return "/" in dataset or os.sep in dataset or dataset.startswith(("~", "."))


def open_dataset(cfg: StageConfig, progress: bool = True) -> tuple[Manifest, str, Imported | None]:
    """The manifest and name of the stage's dataset; a path (or a name that is only a path) is imported first."""
    name = cfg.dataset_name
    if not is_path(name):
        try:
            manifest = load_manifest(cfg.manifest)
        except FileNotFoundError:
            if not Path(name).exists():
                raise
        else:
            if name in manifest.datasets or name in manifest.broken or not Path(name).exists():
                return manifest, name, None
    imported = import_path(Path(name), cfg.cache_path, progress=progress)
    return load_manifest(imported.manifest), imported.name, imported


def dataset_parts(cfg: StageConfig, progress: bool = True) -> dict[str, ResolvedPart]:
    """Every part of the stage's dataset, resolved to files (synthetic data generated, lab data imported)."""
    manifest, name, _ = open_dataset(cfg, progress)
    return resolve_parts(manifest, name, cfg.cache_path, progress=progress)


def check_dataset(cfg: StageConfig, progress: bool = True, workers: int = 0) -> dict[str, CheckReport]:
    """The check report of every part of the stage's dataset, images decoded."""
    return {name: check_part(part, workers=workers, progress=progress)
            for name, part in dataset_parts(cfg, progress).items()}


def load_dataset(cfg: StageConfig, progress: bool = True, workers: int = 0) -> DatasetBundle:
    """Resolve, check and pack ``cfg.dataset_name``; attach the split to train; load the core's truth.

    Strict unless ``cfg.skip_bad``; ``workers`` decoding processes (0 = every core) on the first call only.
    """
    manifest, name, _ = open_dataset(cfg, progress)
    parts = resolve_parts(manifest, name, cfg.cache_path, progress=progress)
    if "train" not in parts:
        raise ManifestError(f"dataset {name!r} has no labelled (train) part; it has: {', '.join(parts)}. The models "
                            "learn from labelled particles: give crops sorted in class folders, a CSV with a label "
                            "column, or FlowCam runs with a VisualSpreadsheet class file (.cla)")
    packed = {
        part: pack_part(parts[part], cfg.image_size, cfg.cache_path, skip_bad=cfg.skip_bad,
                        workers=workers, progress=progress)
        for part in ("train", "core") if part in parts
    }
    if cfg.relabel:
        review = read_label_review(cfg.relabel)
        if not len(review):
            raise FileNotFoundError(f"relabel: {cfg.relabel} holds no verdicts (notebook 01's label review writes them)")
        table = packed["train"].table
        labels = corrected_labels(table[LABEL], review, source=str(cfg.relabel))
        print(f"relabel: {int((labels != table[LABEL].astype('string')).sum())} labels changed by {cfg.relabel}")
        packed["train"] = dataclasses.replace(packed["train"], table=table.assign(**{LABEL: labels.astype(str)}))
    split = packed_split(packed["train"], seed=cfg.seed, val_fraction=cfg.val_fraction,
                         test_fraction=cfg.test_fraction, group_by=cfg.group_split_by or None)
    train = dataclasses.replace(packed["train"], table=packed["train"].table.assign(**{SPLIT: split}))
    truth = read_table(parts["truth"])[LABEL] if "truth" in parts else None
    preview = parts["train"].root / "preview.png"
    return DatasetBundle(name=name, train=train, core=packed.get("core"), truth=truth,
                         classes=dataset_classes(manifest, name, cfg.cache_path, progress),
                         preview=preview if preview.is_file() else None)


@dataclass(frozen=True)
class CoreData:
    """A dataset's core alone, packed: what trained models are applied to (``icecore apply``)."""

    name: str
    core: Packed
    truth: pd.Series | None  # the core's true classes where known (synthetic data); for evaluation only
    classes: dict[str, str]  # the class keys and names the dataset declares


def load_core(cfg: StageConfig, progress: bool = True, workers: int = 0) -> CoreData:
    """Resolve, check and pack the core part of ``cfg.dataset_name`` only (a labelled part, if any, is not read)."""
    manifest, name, _ = open_dataset(cfg, progress)
    parts = resolve_parts(manifest, name, cfg.cache_path, progress=progress)
    if "core" not in parts:
        raise ManifestError(f"dataset {name!r} has no core part (unlabelled particles) to apply the models to; it "
                            f"has: {', '.join(parts)}. Give a FlowCam run folder, a folder of crops or a CSV "
                            "without a label column")
    core = pack_part(parts["core"], cfg.image_size, cfg.cache_path, skip_bad=cfg.skip_bad, workers=workers,
                     progress=progress)
    truth = read_table(parts["truth"])[LABEL] if "truth" in parts else None
    return CoreData(name, core, truth, dataset_classes(manifest, name, cfg.cache_path, progress))


def classes_of(cfg: StageConfig, progress: bool = False) -> dict[str, str]:
    """Class key -> display name of the stage's dataset (a path is imported first), without packing anything."""
    manifest, name, _ = open_dataset(cfg, progress)
    return dataset_classes(manifest, name, cfg.cache_path, progress)
