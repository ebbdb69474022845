"""Validation: each kind of bad input is reported naming its file/line/column; strict raises, skip_bad drops."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import crop, png_bytes
from PIL import Image

from icecore_lib.data.manifest import ResolvedPart, load_manifest
from icecore_lib.data.pack import pack_part
from icecore_lib.data.resolve import resolve_part
from icecore_lib.data.validate import CheckReport, DataError, check_part, read_table

MakeData = Callable[..., Path]


def _part(manifest: Path) -> ResolvedPart:
    """The hand-made dataset's train part."""
    return resolve_part(load_manifest(manifest), "lab", "train")


def _edit_csv(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrite a CSV through a function of its DataFrame (all columns read as text, written back verbatim)."""
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def _edit_manifest(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite the manifest through a function that edits its train part in place."""
    raw = yaml.safe_load(path.read_text())
    change(raw["datasets"]["lab"]["parts"]["train"])
    path.write_text(yaml.safe_dump(raw))


def _add_members(archive: Path, members: dict[str, bytes]) -> None:
    """Append members to the image zip."""
    with zipfile.ZipFile(archive, "a") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _kinds(report: CheckReport) -> list[str]:
    """The kinds of problem in a report."""
    return report.problems["kind"].tolist()


def test_clean_data_passes_and_the_table_is_keyed_by_image_path(instrument_dataset: MakeData) -> None:
    part = _part(instrument_dataset())
    report = check_part(part, workers=1, progress=False)
    assert report.ok and report.problems.empty and report.n_rows == report.n_images == 6
    table = read_table(part)
    assert table.index.name == "particle_id" and table.index.is_unique
    assert table.loc["dust/dust_002.png", "label"] == "dust"
    assert table["Perimeter"].dtype == np.float64


def test_a_row_without_an_image_names_the_csv_line_and_imgpath(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    ghost = "camp/ghost.png"
    _edit_csv(manifest.parent / "camp.csv", lambda df: pd.concat([df, df.tail(1).assign(imgpaths=ghost)]))
    report = check_part(_part(manifest), progress=False, workers=1)
    (problem,) = report.problems.itertuples()
    assert (problem.kind, problem.file, problem.line, problem.particle_id) == ("missing_image", "camp.csv", 5, ghost)
    assert report.bad_ids == (ghost,) and not report.ok
    assert "camp.csv line 5" in report.summary() and ghost in report.summary()


def test_an_image_without_a_row_is_a_warning_naming_the_member(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _add_members(manifest.parent / "images.zip", {"camp/stray.png": png_bytes(crop(9))})
    report = check_part(_part(manifest), progress=False, workers=1)
    assert report.ok and _kinds(report) == ["orphan_image"]
    assert report.problems.loc[0, "particle_id"] == "camp/stray.png" and report.bad_ids == ()


def test_nan_inf_and_text_features_name_line_and_column(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()

    def spoil(df: pd.DataFrame) -> pd.DataFrame:
        df.loc[1, "Perimeter"] = "NaN"
        df.loc[1, "Width"] = "inf"
        df.loc[2, "Symmetry"] = "n/a"
        return df

    _edit_csv(manifest.parent / "dust.csv", spoil)
    report = check_part(_part(manifest), progress=False, workers=1)
    found = report.problems[["kind", "file", "line", "column"]].to_records(index=False).tolist()
    assert sorted(found) == [("non_finite", "dust.csv", 3, "Perimeter"), ("non_finite", "dust.csv", 3, "Width"),
                             ("non_finite", "dust.csv", 4, "Symmetry")]
    assert report.bad_ids == ("dust/dust_001.png", "dust/dust_002.png")
    assert "'n/a'" in report.summary()


def test_unknown_labels_name_the_row_and_value(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "camp.csv", lambda df: df.assign(Class=["camp", "tephra?", "camp"]))
    _edit_manifest(manifest, lambda train: train.update(
        csv=[{"path": "camp.csv"}, {"path": "dust.csv", "label": "dust"}], columns={"Class": "label"}))
    report = check_part(_part(manifest), progress=False, workers=1)
    (problem,) = report.problems.itertuples()
    assert (problem.kind, problem.file, problem.line, problem.column) == ("unknown_label", "camp.csv", 3, "label")
    assert "'tephra?'" in problem.detail and report.bad_ids == ("camp/camp_001.png",)


def test_a_missing_column_names_the_csv_and_column_and_drops_its_rows(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "dust.csv", lambda df: df.drop(columns=["Symmetry"]))
    report = check_part(_part(manifest), progress=False, workers=1)
    (problem,) = report.problems.itertuples()
    assert (problem.kind, problem.file, problem.column) == ("missing_column", "dust.csv", "Symmetry")
    assert report.bad_ids == ("dust/dust_000.png", "dust/dust_001.png", "dust/dust_002.png")
    with pytest.raises(DataError, match="dust.csv, column 'Symmetry'"):
        read_table(_part(manifest))


def test_a_checksum_mismatch_names_the_file_and_both_digests(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_manifest(manifest, lambda train: train.update(sha256={"camp.csv": "a" * 64}))
    report = check_part(_part(manifest), progress=False, workers=1)
    (problem,) = report.problems.itertuples()
    assert problem.kind == "checksum" and problem.file.endswith("camp.csv")
    assert "a" * 64 in problem.detail and "sha256 is " in problem.detail and not report.ok


def test_duplicate_imgpaths_are_an_error_naming_both_rows(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "dust.csv", lambda df: df.assign(imgpaths=["camp/camp_000.png", *df.imgpaths[1:]]))
    with pytest.raises(DataError, match="duplicate_id") as caught:
        read_table(_part(manifest))
    dup = caught.value.report.problems
    assert sorted(zip(dup.file, dup.line)) == [("camp.csv", 2), ("dust.csv", 2)]
    assert "same imgpath as dust.csv line 2" in dup.loc[dup.file == "camp.csv", "detail"].item()


def test_truncated_and_random_images_are_named(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "camp.csv",
              lambda df: pd.concat([df, df.tail(2).assign(imgpaths=["camp/cut.png", "camp/noise.png"])]))
    _add_members(manifest.parent / "images.zip",
                 {"camp/cut.png": png_bytes(crop(5))[:80], "camp/noise.png": bytes(range(256))})
    report = check_part(_part(manifest), progress=False, workers=1)
    assert sorted(report.problems.particle_id) == ["camp/cut.png", "camp/noise.png"]
    assert set(_kinds(report)) == {"undecodable"}
    assert check_part(_part(manifest), decode=False, progress=False).ok


def test_the_report_round_trips_through_json(instrument_dataset: MakeData, tmp_path: Path) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "camp.csv", lambda df: df.assign(Width=["1", "nan", "2"]))
    report = check_part(_part(manifest), progress=False, workers=1)
    report.to_json(tmp_path / "report.json")
    back = CheckReport.from_json((tmp_path / "report.json").read_text())
    assert back.summary() == report.summary() and back.bad_ids == report.bad_ids and not back.ok


def test_strict_packing_raises_and_skip_bad_drops_exactly_the_bad_rows(
    instrument_dataset: MakeData, tmp_path: Path
) -> None:
    manifest = instrument_dataset(n_per_class=4)
    _edit_csv(manifest.parent / "camp.csv", lambda df: df.assign(Width=["1", "nan", "2", "3"]))
    _edit_csv(manifest.parent / "dust.csv", lambda df: df.assign(imgpaths=[*df.imgpaths[:3], "dust/lost.png"]))
    part = _part(manifest)
    with pytest.raises(DataError, match="skip_bad"):
        pack_part(part, 8, tmp_path / "cache", progress=False, workers=1)
    with pytest.warns(UserWarning, match="2 particle"):
        packed = pack_part(part, 8, tmp_path / "cache", skip_bad=True, progress=False, workers=1)
    assert sorted(packed.report.bad_ids) == ["camp/camp_001.png", "dust/lost.png"]
    every = {f"{c}/{c}_{i:03d}.png" for c in ("camp", "dust") for i in range(4)}
    expected = every - {"camp/camp_001.png", "dust/dust_003.png"}
    assert set(packed.table.index) == expected and len(packed.images) == 6
    assert (packed.path / "report.json").exists()


def test_depth_and_volume_are_numbers_and_a_non_number_names_its_place(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    _edit_csv(manifest.parent / "dust.csv",
              lambda df: df.assign(depth_m=["12.5", "", "deep"], volume_ml=["0.5", "abc", ""]))
    report = check_part(_part(manifest), progress=False, workers=1)
    found = report.problems[["kind", "file", "line", "column"]].to_records(index=False).tolist()
    assert found == [("non_finite", "dust.csv", 3, "volume_ml"), ("non_finite", "dust.csv", 4, "depth_m")]
    assert "value 'deep' is not a finite number" in report.summary()
    assert report.bad_ids == ("dust/dust_001.png", "dust/dust_002.png")
    table = read_table(_part(manifest))
    assert table.loc["dust/dust_000.png", ["depth_m", "volume_ml"]].tolist() == [12.5, 0.5]
    assert table["volume_ml"].dtype == np.float64 and np.isnan(table.loc["dust/dust_001.png", "depth_m"])


def test_source_file_and_line_columns_name_the_labs_own_place(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    ghost = "camp/ghost.png"

    def with_provenance(df: pd.DataFrame) -> pd.DataFrame:
        df = pd.concat([df, df.tail(1).assign(imgpaths=ghost), df.tail(1).assign(imgpaths="camp/computed.png")])
        return df.assign(source_file=["run7.lst.csv"] * 4 + ["crops/"], source_line=["x", "11", "12", "42", ""])

    _edit_csv(manifest.parent / "camp.csv", with_provenance)
    report = check_part(_part(manifest), progress=False, workers=1)
    found = report.problems[["kind", "severity", "file"]].to_records(index=False).tolist()
    assert found == [("bad_provenance", "warning", "camp.csv"), ("missing_image", "error", "run7.lst.csv"),
                     ("missing_image", "error", "crops/")]
    assert report.problems.line.tolist()[:2] == [2, 42] and pd.isna(report.problems.line[2])
    assert "missing_image: run7.lst.csv line 42, column 'imgpaths' [camp/ghost.png]" in report.summary()
    assert "missing_image: crops/, column 'imgpaths' [camp/computed.png]" in report.summary()
    table = read_table(_part(manifest))
    assert "source_file" not in table.columns and "source_line" not in table.columns


def test_tiny_and_colour_crops_are_packed_but_reported(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    rgb = np.stack([crop(7), crop(7) // 2, np.full_like(crop(7), 200)], axis=-1)
    extra = {"camp/dot.png": png_bytes(np.full((1, 2), 40, dtype=np.uint8)), "camp/rgb.png": png_bytes(rgb),
             "camp/gray_palette.png": png_bytes(Image.fromarray(crop(8)).convert("P")),
             "camp/gray_as_rgb.png": png_bytes(Image.fromarray(crop(9)).convert("RGB"))}  # neither holds colour
    _edit_csv(manifest.parent / "camp.csv", lambda df: pd.concat([df, *(df.tail(1).assign(imgpaths=n) for n in extra)]))
    _add_members(manifest.parent / "images.zip", extra)
    report = check_part(_part(manifest), progress=False, workers=1)
    assert report.ok and report.bad_ids == () and sorted(_kinds(report)) == ["colour_to_gray", "tiny_crop"]
    tiny = report.problems.set_index("kind").loc["tiny_crop"]
    assert (tiny.file, tiny.particle_id, tiny.severity) == ("images.zip", "camp/dot.png", "warning")
    assert "crop is 2x1 px (width x height), under 3 px" in tiny.detail
    assert "1 of 10 crop(s) are colour images, converted to gray with ITU-R 601 luma" in report.summary()
