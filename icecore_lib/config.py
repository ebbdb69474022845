"""Typed configuration: one dataclass per notebook stage, with every default and profile in this file.

A notebook's papermill ``parameters`` cell holds a profile name plus any overrides; it builds its
stage config with :func:`stage_config`, so the library never reads globals.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

PROFILE_NAMES = ("ci", "demo", "full")


def default_cache_dir() -> Path:
    """Cache for generated datasets and packed arrays: $ICECORE_CACHE, else ~/.cache/icecore."""
    return Path(os.environ.get("ICECORE_CACHE", Path.home() / ".cache" / "icecore"))


# Bump whenever the synthetic generator's output changes, so cached datasets of older versions are not reused.
SYNTH_VERSION = 3
# Metadata features whose class-conditional lab -> core shift exceeds this (pooled within-class SDs) measure the
# instrument rather than the particle; notebooks 04 and 05 leave them out of the metadata space.
MAX_FEATURE_SHIFT = 0.5


@dataclass(frozen=True)
class SynthConfig:
    """Size and seed of a synthetic dataset in the instrument's format."""

    profile: str = "demo"
    seed: int = 0
    n_train_per_class: int = 1200
    n_core: int = 6000
    n_core_samples: int = 12
    diatom_fraction: float = 0.015
    # How far the core's sessions lie from the lab's (background, vignetting, focus, noise): 0 = drawn like the
    # lab's (no acquisition shift), 1 = the demo's darker, softer, noisier core, 2 = twice as far, and so on.
    shift_severity: float = 1.0
    workers: int = 0  # 0 = all cores


SYNTH_PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"n_train_per_class": 40, "n_core": 240, "n_core_samples": 4, "diatom_fraction": 0.05},
    "demo": {},
    "full": {"n_train_per_class": 21500, "n_core": 100000, "n_core_samples": 60},
}


def synth_config(profile: str, seed: int = 0, **overrides: Any) -> SynthConfig:
    """The synthetic dataset config of a profile, with optional overrides."""
    _check_profile(profile)
    values = {**SYNTH_PROFILES[profile], **overrides}
    return SynthConfig(profile=profile, seed=seed, **values)


@dataclass(frozen=True)
class StageConfig:
    """What every notebook stage shares: where the data and the run directory are."""

    profile: str = "demo"
    run_dir: str = ""  # "" = notebook 00 starts a fresh run, later notebooks continue the latest
    dataset: str = ""  # manifest entry; empty = the profile's synthetic dataset
    manifest: str = "data_manifest.yaml"
    cache_dir: str = ""  # empty = default_cache_dir()
    image_size: int = 128
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    group_split_by: str = ""  # e.g. "session" for a split grouped by acquisition session
    skip_bad: bool = False
    relabel: str = ""  # a label_review.csv (notebook 01's verdicts on doubted labels): its labels replace the given ones
    device: str = "auto"
    bootstrap: int = 200  # resamples behind every bootstrap interval (metrics, compositions)
    ash_classes: tuple[str, ...] = ()  # the volcanic ash classes; empty = those whose key or name says ash or tephra
    blank_samples: tuple[str, ...] = ()  # core sample ids that are procedural blanks: subtracted from the others
    # The tephra pick list (notebooks 02 and 05, apply): the surest picks_per_class particles of each ash class per
    # sample, and a crop sheet of the pick_sheet_samples richest samples.
    picks_per_class: int = 10
    pick_sheet_samples: int = 6

    @property
    def dataset_name(self) -> str:
        """The manifest dataset this stage reads."""
        return self.dataset or f"synthetic-{self.profile}"

    @property
    def cache_path(self) -> Path:
        """The cache directory as a Path."""
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


@dataclass(frozen=True)
class OverviewConfig(StageConfig):
    """Notebook 00: data overview."""

    examples_per_class: int = 8


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Shared by every torch model: the one training loop's knobs."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"  # onecycle | cosine
    label_smoothing: float = 0.0
    patience: int = 5
    num_workers: int = 0
    augment: bool = True
    # Defocus and noise augmentation: sessions differ in focus and noise (measured: docs/measurements.md). 0 = off.
    augment_blur: float = 1.0  # largest random defocus sigma (px at model size)
    augment_noise: float = 3.0  # largest random noise std (gray levels)
    compile: bool = False  # torch.compile the model (CUDA; pays a one-off compile time)
    # auto | bf16 | fp32: auto = bf16 autocast where the hardware has native bf16 (CUDA, AVX512-BF16/AMX CPUs).
    precision: str = "auto"
    # Progressive resizing: the first this fraction of the epochs sees the images at half size (a quarter of the
    # pixels: ~3x faster steps on CPU), the rest at full size; only models that take any size (min_image_size).
    low_res_fraction: float = 0.0
    # Image models divide each crop by its own border background first: the core's sessions are lit
    # differently from the reference set's (see ImageNorm). False reproduces the study's plain normalisation.
    flat_field: bool = True
    metadata_features: str = "all"  # a schema.FEATURE_SETS name: the features a model's metadata input gets


@dataclass(frozen=True)
class MetadataConfig(TrainConfig):
    """Notebook 01: XGBoost on the 34 features (with SHAP) and the metadata MLP (the training-loop fields)."""

    eta: float = 0.296
    max_depth: int = 14
    n_estimators: int = 200
    early_stopping_rounds: int = 20
    search_iterations: int = 0  # 0 = use the study's optimum, no search
    cv_folds: int = 3
    shap_sample: int = 500
    epochs: int = 60
    target_precision: float = 0.95
    precision: str = "fp32"  # bf16 saves nothing on an MLP over 34 features and would round them


@dataclass(frozen=True)
class CNNConfig(TrainConfig):
    """Notebook 02: ResNet18 on images, with and without the metadata branch."""

    weights: str = "none"  # none | imagenet (needs internet once)
    variants: tuple[str, ...] = ("image", "both")
    target_precision: float = 0.95
    # The fused model's metadata branch gets the outline and size features only: the gray-level ones follow the
    # session's light (schema.GRAY_LEVEL_FEATURES), which the core does not share. "all" gives the study's 34.
    metadata_features: str = "shape"
    # Classes counted as another for concentrations, e.g. ("Missed=Junk",) where "Missed" means "not a cell either".
    count_as: tuple[str, ...] = ()


@dataclass(frozen=True)
class AEConfig(TrainConfig):
    """Notebook 03: convolutional autoencoder."""

    latent_dims: tuple[int, ...] = (32, 64)
    train_on: str = "train"  # train | core
    lr: float = 1e-3


@dataclass(frozen=True)
class EmbedConfig(TrainConfig):
    """Notebook 04: UMAP, parametric UMAP, leave-one-class-out."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    pumap_epochs: int = 30
    umap_epochs: int | None = None  # umap-learn's layout epochs; None = its own choice (500 under 10,000 points)
    # Held out in turn when the labelled data has every one of them; else every class but the largest (the one a
    # new type is least like a minority of). A class with too few test particles is skipped (stages.loco.plan_holdouts).
    holdout_classes: tuple[str, ...] = ("corylus", "grim", "dust")
    # Each fold's CNN and autoencoder learn from this share of every other class's training particles (stratified):
    # a fold must tell the held-out class apart, not reach top accuracy. Its particles are all still embedded.
    loco_train_fraction: float = 1.0
    min_cluster_size: int = 20
    ae_latent: int = 64  # which autoencoder of notebook 03 gives the AE space
    cluster_space: str = "meta"  # cnn | ae | meta: the space the core is clustered in
    cluster_selection: str = "leaf"  # HDBSCAN: "leaf" finds small homogeneous groups, "eom" the big ones
    max_feature_shift: float = MAX_FEATURE_SHIFT  # metadata features shifting more (lab -> core, within class) are dropped
    align_sessions: bool = True  # align each core session's spaces (features, embeddings, logits) to the lab (shift.align)
    # A core crowd counts in the other core sessions only (CoreExcess): a session's own look makes no new type.
    excess_across_sessions: bool = True


@dataclass(frozen=True)
class DiscoveryConfig(StageConfig):
    """Notebook 05: novelty scores, galleries, explorer."""

    k_neighbors: int = 10
    gallery_size: int = 24
    top_k: tuple[int, ...] = (100, 500)
    ae_latent: int = 64  # which autoencoder of notebook 03 gives the reconstruction loss and the AE space
    flag_quantile: float = 0.01  # a score flags a particle in its top 1% (against training)
    # The "unknown" threshold catches this share of held-out-class particles (pooled LOCO folds). Held-out lab
    # classes are harder to tell from their neighbours than a truly new type (docs/measurements.md).
    target_tpr: float = 0.5
    combine_margin: float = 0.05  # the combined rank averages the stable scores within this LOCO AUROC of the best
    max_score_shift: float = 0.05  # a score is stable when the lab -> core shift moves it by at most this (percentile)
    max_feature_shift: float = MAX_FEATURE_SHIFT  # as in EmbedConfig: the same metadata space
    align_sessions: bool = True  # as in EmbedConfig
    excess_across_sessions: bool = True  # as in EmbedConfig
    # The shift check distrusts the ranking when a core session moves the known classes' percentile in the combined
    # rank's spaces by more than this (discovery.shift_check; measured across the shift sweep, docs/measurements.md).
    max_session_drift: float = 0.1
    count_as: tuple[str, ...] = ()  # as in CNNConfig: classes counted as another for concentrations


@dataclass(frozen=True)
class ApplyConfig(StageConfig):
    """``icecore apply`` (notebook apply_to_core): a finished run's models on a new core, nothing retrained.

    The image size, batches and classifier settings are the training run's (recorded in its params/ folder).
    """

    train_run: str = ""  # the run whose models are applied; empty = the latest run started under the runs folder
    gallery_size: int = 24
    warn_red_fraction: float = 0.05  # drift traffic light: red when more of the core lies beyond training's 99th pct


# Each notebook's stage (the name its parameters and metrics are recorded under) and its config, in notebook order.
STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    "00_data_overview": OverviewConfig,
    "01_metadata": MetadataConfig,
    "02_cnn": CNNConfig,
    "03_autoencoder": AEConfig,
    "04_umap": EmbedConfig,
    "05_discovery": DiscoveryConfig,
}

# Profile overrides, applied along each config's class hierarchy (base classes first).
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "StageConfig": {"image_size": 32, "bootstrap": 20},
        "TrainConfig": {"epochs": 2, "batch_size": 64, "patience": 2},
        "MetadataConfig": {"n_estimators": 20, "max_depth": 4, "shap_sample": 100, "epochs": 5, "cv_folds": 2},
        "EmbedConfig": {"pumap_epochs": 3, "holdout_classes": ("corylus",), "min_cluster_size": 5},
        "DiscoveryConfig": {"gallery_size": 8, "top_k": (10, 20)},
        "ApplyConfig": {"gallery_size": 8},
    },
    "demo": {
        "StageConfig": {"image_size": 64},
        # Four full-size one-cycle epochs (measured against wall time: bench/time_to_accuracy.py, docs/measurements.md).
        "TrainConfig": {"epochs": 4, "batch_size": 128},
        "MetadataConfig": {"search_iterations": 6, "epochs": 60},
        "AEConfig": {"epochs": 4},
        # Leave-one-class-out retrains the CNN and the AE once per held-out class: 30% of the data, a shorter
        # schedule; umap-learn lays out 200 epochs (its own choice above 10,000 points) at every size.
        "EmbedConfig": {"epochs": 3, "loco_train_fraction": 0.3, "pumap_epochs": 15, "umap_epochs": 200},
    },
    "full": {
        "StageConfig": {"bootstrap": 1000},
        "TrainConfig": {"epochs": 30, "batch_size": 512, "num_workers": 4},
        "MetadataConfig": {"search_iterations": 20, "cv_folds": 5, "shap_sample": 2000, "epochs": 60},
        "EmbedConfig": {"holdout_classes": ("camp", "corylus", "dust", "grim", "qrob", "qsub", "cont")},
        "DiscoveryConfig": {"gallery_size": 48, "top_k": (100, 500, 2000)},
    },
}

C = TypeVar("C", bound=StageConfig)


def _check_profile(profile: str) -> None:
    """Fail with the valid names when a profile is unknown."""
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")


def profile_defaults(cls: type[C], profile: str) -> dict[str, Any]:
    """The field values a profile sets for a config class (inherited overrides included)."""
    _check_profile(profile)
    values: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        values.update(PROFILES[profile].get(klass.__name__, {}))
    return values


def stage_config(cls: type[C], profile: str = "demo", overrides: Mapping[str, Any] | None = None, **params: Any) -> C:
    """Build a stage config: dataclass defaults < profile < run-wide ``overrides`` < explicit parameters.

    ``overrides`` hold settings for the whole run (``icecore run -p epochs=3``): this stage takes the ones it
    has and leaves the rest to the stages that have them (:func:`check_overrides` refuses names no stage has).
    Explicit parameters must be fields of ``cls``; None means not given.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__} has no parameter(s) {unknown}; known: {sorted(names)}")
    mine = {k: v for k, v in (overrides or {}).items() if k in names}
    tuples = {f.name for f in dataclasses.fields(cls) if isinstance(f.default, tuple)}
    given = {k: _coerce(v, k in tuples) for k, v in {**mine, **params}.items() if v is not None}
    return cls(**{**profile_defaults(cls, profile), **given, "profile": profile})


def check_overrides(overrides: Mapping[str, Any]) -> None:
    """Refuse run-wide settings that no notebook stage has (a typo would otherwise change nothing, silently)."""
    reserved = sorted(set(overrides) & {"profile", "run_dir", "dataset"})
    if reserved:
        raise ValueError(f"{reserved} are set by the run itself (icecore run --profile/--dataset), not as overrides")
    known = {f.name for cls in STAGE_CONFIGS.values() for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"no notebook stage has the setting(s) {unknown}; known: {sorted(known)}")


def _coerce(value: Any, is_tuple: bool) -> Any:
    """Turn papermill-friendly lists (and, for a tuple setting, a single value) into the tuples the configs hold."""
    if isinstance(value, list):
        return tuple(value)
    if is_tuple and not isinstance(value, tuple):
        return (value,)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain YAML/JSON-friendly values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


__all__ = [
    "AEConfig",
    "ApplyConfig",
    "CNNConfig",
    "DiscoveryConfig",
    "EmbedConfig",
    "MetadataConfig",
    "OverviewConfig",
    "PROFILES",
    "PROFILE_NAMES",
    "STAGE_CONFIGS",
    "StageConfig",
    "SynthConfig",
    "TrainConfig",
    "check_overrides",
    "default_cache_dir",
    "profile_defaults",
    "stage_config",
    "synth_config",
    "to_dict",
]


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` with the value read as YAML (numbers, booleans, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)
