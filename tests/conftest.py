"""Shared fixtures: a tiny synthetic dataset (generated once per session) and hand-made instrument data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import TINY_IMAGE_SIZE, write_instrument_dataset

from icecore_lib.config import StageConfig, stage_config, synth_config
from icecore_lib.schema import CLASSES


@pytest.fixture
def instrument_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``instrument_dataset(**options)`` runs write_instrument_dataset under tmp_path."""
    return lambda **options: write_instrument_dataset(tmp_path / "lab", **options)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (7 classes x ~6 train crops, 30 core crops), generated once per session."""
    from icecore_lib.synth.dataset import generate

    out = tmp_path_factory.mktemp("synthetic") / "tiny"
    generate(out, synth_config("ci", n_train_per_class=6, n_core=30, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_dir: Path) -> Path:
    """A manifest whose dataset ``tiny`` is the session's synthetic dataset (train, core, truth)."""
    manifest = {
        "classes": dict(CLASSES),
        "datasets": {"tiny": {"root": str(synthetic_dir), "parts": {
            "train": {"csv": "train.csv", "images": "train.zip"},
            "core": {"csv": "core.csv", "images": "core.zip"},
            "truth": {"csv": "core_truth.csv"},
        }}},
    }
    path = synthetic_dir.parent / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_stage(synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> StageConfig:
    """A ci stage config reading the tiny synthetic dataset, with its own cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    return stage_config(StageConfig, "ci", dataset="tiny", manifest=str(synthetic_manifest),
                        cache_dir=str(cache), image_size=TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_stage: StageConfig):
    """The tiny synthetic dataset loaded, checked, packed (32x32) and split: a ``data.DatasetBundle``."""
    from icecore_lib.data.dataset import load_dataset

    return load_dataset(tiny_stage, progress=False, workers=1)
