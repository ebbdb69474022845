"""The synthetic dataset: the instrument's format, deterministic for a seed, diatoms only in the core, safe writes."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import icecore_lib.synth.dataset as writer
from icecore_lib.config import SynthConfig, synth_config
from icecore_lib.schema import CLASSES, DEPTH, FLOWCAM_FEATURES, IMGPATH, LABEL, NEW_CLASS, SAMPLE, SESSION, VOLUME
from icecore_lib.synth.dataset import generate, plan_core
from icecore_lib.synth.sessions import _CORE, _LAB, core_sessions, core_settings, train_sessions

TINY = {"n_train_per_class": 5, "n_core": 50, "n_core_samples": 3, "diatom_fraction": 0.1, "workers": 1}
FILES = {"train.zip", "train.csv", "core.zip", "core.csv", "core_truth.csv", "preview.png", "synth.json"}


def tiny(seed: int = 0, **overrides: object) -> SynthConfig:
    """A config small enough to generate in about a second."""
    return synth_config("ci", seed=seed, **{**TINY, **overrides})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny dataset shared by the read-only tests."""
    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, tiny(), progress=False)
    return out


def zip_members(path: Path) -> dict[str, bytes]:
    """Every member of a zip and its bytes."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_writes_every_file_with_the_exact_columns(dataset: Path) -> None:
    assert {p.name for p in dataset.iterdir()} == FILES
    train = pd.read_csv(dataset / "train.csv")
    core = pd.read_csv(dataset / "core.csv")
    truth = pd.read_csv(dataset / "core_truth.csv")
    assert list(train.columns) == [IMGPATH, LABEL, SESSION, *FLOWCAM_FEATURES]
    assert list(core.columns) == [IMGPATH, SAMPLE, DEPTH, SESSION, VOLUME, *FLOWCAM_FEATURES]
    per_sample = core.groupby(SAMPLE)[VOLUME]
    assert (per_sample.nunique() == 1).all() and (core[VOLUME] > 0).all()
    assert list(truth.columns) == [IMGPATH, LABEL]
    assert list(truth[IMGPATH]) == list(core[IMGPATH])


def test_csv_rows_match_zip_members_and_images_are_stored_gray_pngs(dataset: Path) -> None:
    for part in ("train", "core"):
        table = pd.read_csv(dataset / f"{part}.csv")
        with zipfile.ZipFile(dataset / f"{part}.zip") as archive:
            assert archive.namelist() == list(table[IMGPATH])
            assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
            image = Image.open(io.BytesIO(archive.read(table[IMGPATH].iloc[0])))
            assert image.format == "PNG" and image.mode == "L"


def test_train_has_every_class_in_its_own_session(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv")
    assert set(train[LABEL]) == set(CLASSES)
    sessions = train.groupby(LABEL)[SESSION].unique()
    assert all(len(s) == 1 and s[0].startswith(label) for label, s in sessions.items())
    assert all(name.startswith(session) for name, session in zip(train[IMGPATH], train[SESSION]))


def test_features_are_finite(dataset: Path) -> None:
    for part in ("train", "core"):
        assert np.isfinite(pd.read_csv(dataset / f"{part}.csv")[list(FLOWCAM_FEATURES)].to_numpy()).all()


def test_diatoms_only_in_core_at_the_requested_fraction(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv")
    core = pd.read_csv(dataset / "core.csv")
    truth = pd.read_csv(dataset / "core_truth.csv")
    assert LABEL not in core.columns
    assert NEW_CLASS not in set(train[LABEL])
    assert (truth[LABEL] == NEW_CLASS).sum() == round(TINY["diatom_fraction"] * TINY["n_core"])


def test_core_is_prior_shifted_towards_dust_with_its_own_sessions_and_samples() -> None:
    plan = plan_core(tiny(n_core=3000, n_core_samples=12))
    shares = plan[LABEL].value_counts(normalize=True)
    assert shares.idxmax() == "dust" and 0.4 < shares["dust"] < 0.7
    assert plan[SAMPLE].nunique() == 12
    assert plan.groupby(SAMPLE)[DEPTH].median().is_monotonic_increasing
    assert not set(plan[SESSION]) & {s.name for s in train_sessions(0).values()}
    ash = plan.assign(ash=plan[LABEL].isin(["camp", "grim"])).groupby(SAMPLE)["ash"].mean()
    assert ash.max() > 0.3 > ash.median()


def test_crop_sizes_follow_the_classes(dataset: Path) -> None:
    train = pd.read_csv(dataset / "train.csv")
    with zipfile.ZipFile(dataset / "train.zip") as archive:
        longest = [max(Image.open(io.BytesIO(archive.read(n))).size) for n in train[IMGPATH]]
    sizes = train.assign(longest=longest).groupby(LABEL)["longest"].median()
    assert sizes["dust"] < 50 < sizes["corylus"] < sizes["qrob"]


def test_summary_counts_match_the_tables(dataset: Path) -> None:
    summary = json.loads((dataset / "synth.json").read_text())
    train = pd.read_csv(dataset / "train.csv")
    assert summary["counts"]["train"] == train[LABEL].value_counts().to_dict()
    assert summary["n_particles"]["core"] == TINY["n_core"]
    assert summary["config"]["seed"] == 0


def test_same_seed_same_data_for_any_number_of_workers(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, tiny(workers=2), progress=False)
    for name in ("train.csv", "core.csv", "core_truth.csv"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    for name in ("train.zip", "core.zip"):
        assert zip_members(again / name) == zip_members(dataset / name)


def test_different_seed_differs(dataset: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate(other, tiny(seed=1), progress=False)
    assert (other / "train.csv").read_bytes() != (dataset / "train.csv").read_bytes()
    assert zip_members(other / "core.zip") != zip_members(dataset / "core.zip")


def test_refuses_a_non_empty_out_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        generate(tmp_path, tiny(), progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_preview(*args: object, **kwargs: object) -> None:
        raise RuntimeError("preview failed")

    monkeypatch.setattr(writer, "contact_sheet", broken_preview)
    with pytest.raises(RuntimeError, match="preview failed"):
        generate(tmp_path / "data", tiny(), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="diatom_fraction"):
        generate(tmp_path / "data", tiny(diatom_fraction=1.5), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_shift_severity_moves_the_core_sessions_away_from_the_labs_step_by_step() -> None:
    assert core_settings(1.0) == _CORE and core_settings(0.0) == _LAB
    far = core_settings(2.0)
    assert far.background == (92.0, 98.0) and far.blur == pytest.approx((1.4, 1.8))
    means = {s: np.mean([[x.background, x.blur, x.noise] for x in core_sessions(0, 12, s)], axis=0) for s in (0, 1, 2)}
    assert means[0][0] > means[1][0] > means[2][0]  # darker
    assert means[0][1] < means[1][1] < means[2][1] and means[0][2] < means[1][2] < means[2][2]  # softer, noisier
    farthest = core_settings(4.0)  # the background range would invert beyond severity 3: it stays a point
    assert farthest.background == pytest.approx((65.0, 65.0)) and farthest.blur == pytest.approx((2.2, 2.6))
    assert all(low <= high for low, high in dataclasses.astuple(farthest))
    with pytest.raises(ValueError, match="shift_severity"):
        writer.check_config(synth_config("ci", shift_severity=-1))
