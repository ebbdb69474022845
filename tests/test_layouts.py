"""A lab's own folder in one command: layouts recognised, FlowCam collages cut, class folders joined to their CSV,
features computed when there is no CSV, the manifest entry written by `icecore import`.

The FlowCam tests read a small slice of the real export in ../shared/realdata (one raw run, 40 particles, its
collage sheets linked, not copied) and skip with the reason when that folder is absent.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import crop, png_bytes, write_instrument_dataset
from PIL import Image

from icecore_lib.cli import main
from icecore_lib.config import StageConfig, stage_config
from icecore_lib.data import flowcam
from icecore_lib.data.dataset import load_dataset
from icecore_lib.data.layouts import LayoutError, detect_layout, import_path
from icecore_lib.data.manifest import ManifestError, load_manifest
from icecore_lib.data.register import register_import
from icecore_lib.data.resolve import resolve_parts
from icecore_lib.data.validate import check_part, read_table
from icecore_lib.run.artifacts import Run
from icecore_lib.schema import FLOWCAM_FEATURES, LABEL, SAMPLE, SESSION, VOLUME

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowcam-vickot"
RUN = "7-Pygsuia-SF-SW-NITRATE-day5-sample3-replicate3-08April2024"
N_SLICE = 40
needs_realdata = pytest.mark.skipif(not (REALDATA / "raw" / RUN).is_dir(),
                                    reason=f"real FlowCam export not found at {REALDATA} (a user's clone has none)")


def raw_slice(target: Path, n: int = N_SLICE) -> Path:
    """One real raw run folder with its CSV cut to ``n`` particles; the other files linked, not copied."""
    source = REALDATA / "raw" / RUN
    run = target / RUN
    run.mkdir(parents=True)
    for file in source.iterdir():
        if file.suffix != ".csv" or file.stem.endswith("_summary"):
            os.symlink(file, run / file.name)
    lines = (source / f"{RUN}.csv").read_text(encoding="latin-1").splitlines(keepends=True)
    (run / f"{RUN}.csv").write_text("".join(lines[: n + 1]), encoding="latin-1")
    return target


@needs_realdata
def test_raw_run_crops_are_the_instruments_crops(tmp_path: Path) -> None:
    """Crops cut from the collage sheets equal, pixel for pixel, the crops the person sorted into class folders."""
    imported = import_path(raw_slice(tmp_path / "raw"), tmp_path / "cache", progress=False)
    assert imported.layout == "flowcam-raw"
    assert any("checked against" in note for note in imported.notes)
    rows = pd.read_csv(REALDATA / "raw" / RUN / f"{RUN}.csv", nrows=N_SLICE)
    with zipfile.ZipFile(imported.folder / "crops.zip") as zf:
        assert len(zf.namelist()) == N_SLICE
        for _, row in rows.iloc[[0, 7, N_SLICE - 1]].iterrows():
            ours = np.asarray(Image.open(zf.open(f"{RUN}/{row['Particle ID']:06d}.png")))
            person = next((REALDATA / "classes").glob(f"*/{RUN}_{row['Original Reference ID']}.png"))
            np.testing.assert_array_equal(ours, np.asarray(Image.open(person))[..., :3])


@needs_realdata
def test_raw_run_is_a_core_sample_with_its_volume_and_classified_particles(tmp_path: Path) -> None:
    """One sample per run, its fluid volume from the run summary, the .cla's particles labelled, features complete."""
    imported = import_path(raw_slice(tmp_path / "raw"), tmp_path / "cache", progress=False)
    manifest = load_manifest(imported.manifest)
    parts = resolve_parts(manifest, imported.name, tmp_path / "cache", progress=False)
    core = read_table(parts["core"])
    assert len(core) == N_SLICE
    assert set(core[SAMPLE]) == {RUN} and set(core[SESSION]) == {RUN}
    assert core[VOLUME].astype(float).unique().tolist() == [0.029]
    assert set(FLOWCAM_FEATURES) <= set(core.columns)
    expected_labels = flowcam.read_class_file(REALDATA / "raw" / RUN / f"{RUN}.cla")
    train = read_table(parts["train"])
    ids = train.index.str.rsplit("/", n=1).str[-1].str[:-4].astype(int)
    assert list(train[LABEL]) == list(expected_labels.reindex(ids))
    assert check_part(parts["core"], progress=False).ok
    runs = pd.read_csv(imported.folder / "runs.csv")
    assert runs.loc[0, "fluid_volume_ml"] == 0.029 and runs.loc[0, "particle_count"] == 1000
    assert any("counts 1,000 particles, the CSV has 40" in note for note in imported.notes)


@needs_realdata
def test_run_summary_and_class_file_parsed() -> None:
    """The run summary's volume, count, calibration; the class file's members (filter classes, one class each)."""
    summary = flowcam.read_run_summary(REALDATA / "raw" / RUN / f"{RUN}_run_summary.txt")
    assert (summary.fluid_volume_ml, summary.particle_count, summary.calibration_um_px) == (0.029, 1000, 0.5544)
    assert summary.software == "VisualSpreadsheet 4.19.3"
    labels = flowcam.read_class_file(REALDATA / "raw" / RUN / f"{RUN}.cla")
    assert labels.value_counts().to_dict() == {"Junk": 266, "protist": 1}


@needs_realdata
def test_box_outside_its_sheet_is_reported_with_the_labs_line(tmp_path: Path) -> None:
    """A CSV row whose box leaves the collage is not cut; its row is a missing image naming the lab's CSV line."""
    raw = raw_slice(tmp_path / "raw", n=5)
    csv = raw / RUN / f"{RUN}.csv"
    frame = pd.read_csv(csv)
    frame.loc[2, "Image X"] = 5000
    frame.to_csv(csv, index=False)
    imported = import_path(raw, tmp_path / "cache", progress=False)
    assert any("could not be cut" in note and "outside the sheet" in note for note in imported.notes)
    parts = resolve_parts(load_manifest(imported.manifest), imported.name, tmp_path / "cache", progress=False)
    problems = check_part(parts["core"], progress=False).problems
    missing = problems[problems["kind"] == "missing_image"]
    assert missing["line"].tolist() == [4] and missing["file"].iloc[0].endswith(f"{RUN}.csv")


def class_folders(root: Path, with_csv: bool) -> Path:
    """Crops sorted into three class folders; optionally a feature CSV beside them keyed by file name."""
    folder = root / "classes"
    rows = []
    for k, label in enumerate(("Junk", "Missed", "Protist")):
        (folder / label).mkdir(parents=True)
        for i in range(4 + 3 * k):
            name = f"run{i % 2}_{k:08X}-0000-0000-0000-{i:012X}.png"
            (folder / label / name).write_bytes(png_bytes(crop(10 * k + i)))
            rows.append({"File_name": name, "Class": label, **{f: 1.0 + i for f in FLOWCAM_FEATURES}})
    if with_csv:
        table = pd.DataFrame(rows).drop(columns=["Biovolume (Cylinder)", "Biovolume (P. Spheroid)"])
        table.loc[0, "Class"] = "Protist"  # a row whose CSV class disagrees with the folder it was sorted into
        table.to_csv(root / "features.csv", index=False)
    return folder


def test_class_folders_with_a_feature_csv(tmp_path: Path) -> None:
    """Labels from the folders (they win over the CSV), features joined by file name, runs from the names."""
    imported = import_path(class_folders(tmp_path, with_csv=True), tmp_path / "cache", progress=False)
    assert imported.layout == "class-folders"
    notes = " ".join(imported.notes)
    assert "joined on its 'File_name' column" in notes and "1 row(s) of features.csv name a class other" in notes
    assert "computed from Length and Width" in notes
    cfg = stage_config(StageConfig, "ci", dataset=str(class_folders_path(tmp_path)), cache_dir=str(tmp_path / "cache"))
    bundle = load_dataset(cfg, progress=False)
    table = bundle.train.table
    assert table[LABEL].value_counts().to_dict() == {"Protist": 10, "Missed": 7, "Junk": 4}
    assert set(table[SESSION]) == {"run0", "run1"}
    assert table["Biovolume (Cylinder)"].iloc[0] == pytest.approx(np.pi / 4 * table["Width"].iloc[0] ** 2
                                                                   * table["Length"].iloc[0])
    assert set(bundle.classes) == {"Junk", "Missed", "Protist"}


def class_folders_path(root: Path) -> Path:
    """The class-folder root written by :func:`class_folders`."""
    return root / "classes"


def test_class_folders_without_csv_compute_features_and_say_so(tmp_path: Path) -> None:
    """No feature CSV: the 34 features are computed from the crops, and the note says they are not the instrument's."""
    imported = import_path(class_folders(tmp_path, with_csv=False), tmp_path / "cache", progress=False)
    assert any("COMPUTED from the crops" in note for note in imported.notes)
    table = read_table(resolve_parts(load_manifest(imported.manifest), imported.name, tmp_path / "cache")["train"])
    assert len(table) == 21 and np.isfinite(table[list(FLOWCAM_FEATURES)].astype(float)).all().all()


def test_images_only_folder_is_a_core_with_computed_features(tmp_path: Path) -> None:
    """A bare folder of crops is recognised as 'images': a core part, features computed."""
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.png").write_bytes(png_bytes(crop(i)))
    imported = import_path(folder, tmp_path / "cache", progress=False)
    assert imported.layout == "images"
    assert set(load_manifest(imported.manifest).dataset(imported.name).parts) == {"core"}
    assert any("no labels found" in note for note in imported.notes)


def test_csv_with_imgpaths_beside_its_zip(tmp_path: Path) -> None:
    """Today's format given by path: the CSV with imgpaths next to its zip, labelled by its label column."""
    manifest = write_instrument_dataset(tmp_path / "lab", classes=("camp", "dust"), n_per_class=3)
    root = manifest.parent
    merged = pd.concat([pd.read_csv(root / f"{c}.csv").assign(label=c) for c in ("camp", "dust")])
    merged.to_csv(root / "particles.csv", index=False)
    for c in ("camp", "dust"):
        (root / f"{c}.csv").unlink()
    manifest.unlink()
    assert detect_layout(root / "particles.csv") == "csv"
    imported = import_path(root / "particles.csv", tmp_path / "cache", progress=False)
    table = read_table(resolve_parts(load_manifest(imported.manifest), imported.name, tmp_path / "cache")["train"])
    assert sorted(table[LABEL].unique()) == ["camp", "dust"] and len(table) == 6


def test_unrecognised_folder_says_what_was_expected(tmp_path: Path) -> None:
    """A folder holding nothing icecore reads names every layout it looked for."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(LayoutError, match="no recognised layout.*FlowCam raw run folders.*class folders"):
        detect_layout(tmp_path / "empty")


def test_import_is_reused_until_the_data_changes(tmp_path: Path) -> None:
    """The same folder imports once; a changed file gives a new import."""
    folder = class_folders(tmp_path, with_csv=True)
    first = import_path(folder, tmp_path / "cache", progress=False)
    assert import_path(folder, tmp_path / "cache", progress=False).folder == first.folder
    (folder / "Junk" / "extra.png").write_bytes(png_bytes(crop(99)))
    assert import_path(folder, tmp_path / "cache", progress=False).folder != first.folder


def test_register_import_keeps_the_manifest_and_pins_files(tmp_path: Path) -> None:
    """`icecore import` appends a named entry (comments kept), refuses a taken name, and a changed file is refused."""
    folder = class_folders(tmp_path, with_csv=True)
    manifest = tmp_path / "lab_manifest.yaml"
    manifest.write_text("# our lab's datasets\nclasses: {a: A}\ndatasets:\n  old: {root: ., parts: {truth: {csv: t.csv}}}\n")
    assert main(["-q", "import", str(folder), "--name", "ref2024", "--manifest", str(manifest),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    text = manifest.read_text()
    assert text.startswith("# our lab's datasets") and "ref2024:" in text
    entry = yaml.safe_load(text)["datasets"]["ref2024"]
    assert entry["import"]["sha256"] and entry["classes"] == {"Junk": "Junk", "Missed": "Missed", "Protist": "Protist"}
    imported = import_path(folder, tmp_path / "cache", progress=False)
    with pytest.raises(ManifestError, match="exists already"):
        register_import(imported, manifest, name="ref2024")
    cfg = stage_config(StageConfig, "ci", dataset="ref2024", manifest=str(manifest), cache_dir=str(tmp_path / "cache"))
    assert len(load_dataset(cfg, progress=False).train.table) == 21
    features = tmp_path / "features.csv"
    features.write_text(features.read_text().replace("Missed", "Junk", 1))
    with pytest.raises(ManifestError, match="features.csv has sha256 .* the manifest pins"):
        load_dataset(cfg, progress=False)


def test_one_broken_manifest_entry_leaves_the_others_usable(tmp_path: Path) -> None:
    """A bad entry fails only when it is used, with its own error."""
    manifest = tmp_path / "m.yaml"
    manifest.write_text(yaml.safe_dump({"classes": {"a": "A"}, "datasets": {
        "good": {"root": ".", "parts": {"truth": {"csv": "t.csv"}}},
        "bad": {"root": ".", "parts": {"train": {"csv": "x.csv"}}, "colour": "blue"},
    }}))
    loaded = load_manifest(manifest)
    assert loaded.dataset("good").root == "."
    with pytest.raises(ManifestError, match="unknown key.*colour"):
        loaded.dataset("bad")
    with pytest.raises(ManifestError, match="by its path instead of a name"):
        loaded.dataset("missing")


def test_check_takes_a_path_and_saves_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`icecore check PATH` names the layout, checks every part and saves the full report where it says."""
    folder = class_folders(tmp_path, with_csv=True)
    assert main(["-q", "check", str(folder), "--profile", "ci", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "layout class-folders" in out
    saved = Path(out.rsplit("full reports (every problem, JSON): ", 1)[1].strip())
    assert (saved / "train.json").is_file()


@pytest.mark.slow
@needs_realdata
def test_notebook_00_reports_each_runs_particles_per_ml_as_its_run_summary(tmp_path: Path) -> None:
    """`icecore run --data RAW --only 00` on a real run: per-run particles per ml = Particle Count / Fluid Volume Imaged."""
    raw = raw_slice(tmp_path / "raw", n=1000)
    cache = tmp_path / "cache"
    assert main(["-q", "run", "--data", str(raw), "--profile", "ci", "--only", "00", "--runs-root",
                 str(tmp_path / "runs"), "--cache-dir", str(cache)]) == 0
    (run_dir,) = [d for d in (tmp_path / "runs").iterdir() if d.name != "LATEST"]
    per_ml = Run(run_dir).section("data")["core"]["per_ml"]
    summary = flowcam.read_run_summary(REALDATA / "raw" / RUN / f"{RUN}_run_summary.txt")
    assert per_ml == {RUN: pytest.approx(summary.particle_count / summary.fluid_volume_ml)}
    table = Run(run_dir).read("sample_concentrations")
    assert table.loc[0, "per_ml_lo"] < per_ml[RUN] < table.loc[0, "per_ml_hi"]
