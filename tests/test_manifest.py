"""The manifest: the shipped file reads, errors name the dataset/key/file, synthetic data is made once."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import icecore_lib.data.resolve as resolve_mod
from icecore_lib.config import SYNTH_VERSION
from icecore_lib.data.manifest import ManifestError, load_manifest
from icecore_lib.data.resolve import resolve_part
from icecore_lib.schema import CLASSES

REPO_MANIFEST = Path(__file__).resolve().parent.parent / "data_manifest.yaml"


def _write(path: Path, datasets: dict, **top: object) -> Path:
    """A manifest file with the study's classes and the given datasets."""
    path.write_text(yaml.safe_dump({"classes": dict(CLASSES), "datasets": datasets, **top}))
    return path


def _lab(**part: object) -> dict:
    """A one-part dataset entry rooted next to the manifest."""
    return {"lab": {"root": ".", "parts": {"train": {"csv": "t.csv", "images": "i.zip", **part}}}}


def test_the_shipped_manifest_reads_with_the_study_classes_and_datasets() -> None:
    manifest = load_manifest(REPO_MANIFEST)
    assert dict(manifest.classes) == CLASSES
    assert {"synthetic-ci", "synthetic-demo", "synthetic-full", "icelearning"} <= set(manifest.datasets)
    assert manifest.dataset("synthetic-demo").synthetic.folder == f"demo-seed0-v{SYNTH_VERSION}"
    ice = manifest.dataset("icelearning")
    assert ice.source["doi"] == "10.5281/zenodo.7591282"
    assert sorted(c.label for c in ice.parts["train"].csv) == sorted(CLASSES)


@pytest.mark.parametrize(
    ("datasets", "top", "message"),
    [
        (_lab(), {"extra": 1}, "unknown key.*extra"),
        ({"lab": {"root": ".", "parts": {}, "colour": "red"}}, {}, "dataset 'lab'.*unknown key.*colour"),
        (_lab(imges="x"), {}, "part 'train'.*unknown key.*imges"),
        ({"lab": {"root": ".", "parts": {"validation": {"csv": "v.csv"}}}}, {}, "unknown key.*validation"),
        (_lab(columns={"Depth": "depth"}), {}, "unknown column.*depth"),
        (_lab(sha256={"t.csv": "abc"}), {}, "sha256 of 't.csv' is not 64 hex digits"),
        (_lab(session_pattern="no group"), {}, "needs exactly one"),
        ({"lab": {"synthetic": {"profile": "huge"}, "parts": {"train": {"csv": "a", "images": "b"}}}}, {}, "huge"),
        ({"lab": {"parts": {"train": {"csv": "a", "images": "b"}}}}, {}, "dataset 'lab'.*needs `root`"),
        ({"lab": {"root": ".", "parts": {"train": {"csv": "t.csv"}}}}, {}, "part 'train'.*needs `images`"),
    ],
)
def test_malformed_manifests_are_errors_naming_the_key(tmp_path: Path, datasets: dict, top: dict, message: str) -> None:
    """A malformed top level fails on reading; a malformed entry fails when it is used (the others stay usable)."""
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(tmp_path / "m.yaml", datasets, **top)).dataset("lab")


def test_an_unknown_dataset_or_part_is_named_with_the_known_ones(tmp_path: Path) -> None:
    manifest = load_manifest(_write(tmp_path / "m.yaml", _lab()))
    with pytest.raises(ManifestError, match="no dataset 'grip'; known datasets: lab"):
        manifest.dataset("grip")
    with pytest.raises(ManifestError, match="dataset 'lab' has no part 'core'; it has: train"):
        resolve_part(manifest, "lab", "core")


def test_missing_files_are_named_with_where_to_get_the_data(tmp_path: Path) -> None:
    datasets = _lab()
    datasets["lab"]["source"] = {"doi": "10.1/xyz"}
    manifest = load_manifest(_write(tmp_path / "m.yaml", datasets))
    with pytest.raises(FileNotFoundError, match=r"dataset 'lab', part 'train': t.csv not found .*doi: 10.1/xyz"):
        resolve_part(manifest, "lab", "train")


def test_root_expands_environment_variables_and_names_unset_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "t.csv").write_text("imgpaths\n")
    (data / "i.zip").write_bytes(b"")
    datasets = _lab(sha256={"t.csv": "0" * 64})
    datasets["lab"]["root"] = "${ICECORE_TEST_DATA}"
    manifest = load_manifest(_write(tmp_path / "m.yaml", datasets))
    monkeypatch.delenv("ICECORE_TEST_DATA", raising=False)
    with pytest.raises(ManifestError, match=r"dataset 'lab'.*\$\{ICECORE_TEST_DATA\}.*not set"):
        resolve_part(manifest, "lab", "train")
    monkeypatch.setenv("ICECORE_TEST_DATA", str(data))
    part = resolve_part(manifest, "lab", "train")
    assert part.csvs[0].path == data / "t.csv" and part.images == data / "i.zip"
    assert part.sha256 == {data / "t.csv": "0" * 64}


def test_a_checksum_for_a_file_outside_the_part_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("imgpaths\n")
    (tmp_path / "i.zip").write_bytes(b"")
    manifest = load_manifest(_write(tmp_path / "m.yaml", _lab(sha256={"other.csv": "0" * 64})))
    with pytest.raises(ManifestError, match="sha256 names 'other.csv'"):
        resolve_part(manifest, "lab", "train")


def test_synthetic_data_is_generated_on_first_use_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_generate(out_dir: Path, cfg: object, progress: bool = True) -> dict:
        calls.append(cfg)
        out_dir.mkdir(parents=True)
        for name in ("train.csv", "train.zip", "core.csv", "core.zip", "core_truth.csv"):
            (out_dir / name).write_text("")
        return {}

    monkeypatch.setattr(resolve_mod, "generate", fake_generate)
    manifest = load_manifest(REPO_MANIFEST)
    first = resolve_part(manifest, "synthetic-ci", "train", cache_dir=tmp_path, progress=False)
    second = resolve_part(manifest, "synthetic-ci", "core", cache_dir=tmp_path, progress=False)
    assert len(calls) == 1 and calls[0].profile == "ci" and calls[0].seed == 0
    assert first.root == second.root == tmp_path / "synthetic" / f"ci-seed0-v{SYNTH_VERSION}"
    assert first.csvs[0].path == first.root / "train.csv" and second.images == first.root / "core.zip"
