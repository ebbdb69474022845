"""Lab CSVs as labs have them: encodings, separators, decimal commas, preambles and summaries, named errors."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icecore_lib.data.labcsv import LabCsvError, SkippedLine, lab_number, read_lab_csv
from icecore_lib.data.manifest import load_manifest
from icecore_lib.data.resolve import resolve_part
from icecore_lib.data.validate import check_part, read_table
from icecore_lib.schema import SESSION

MakeData = Callable[..., Path]

# The header of a VisualSpreadsheet (FlowCam) export, as in flowcam-vickot's raw CSVs: 71 columns.
VISUALSPREADSHEET_HEADER = (
    "Particle ID,Area (ABD),Area (Filled),Aspect Ratio,Average Blue,Average Green,Average "
    "Red,Calibration Factor,Calibration Image,Camera,Capture X,Capture Y,Ch1 Area,Ch1 Peak,Ch1 Width,Ch2 "
    "Area,Ch2 Peak,Ch2 Width,Ch2/Ch1 Ratio,Circle Fit,Circularity,Circularity (Hu),Compactness,Convex "
    "Perimeter,Convexity,Date,Diameter (ABD),Diameter (ESD),Diameter (FD),Edge Gradient,Elapsed "
    "Time,Elongation,Feret Angle Max,Feret Angle Min,Fiber Curl,Fiber Straightness,Filter Score,Geodesic "
    "Aspect Ratio,Geodesic Length,Geodesic Thickness,Image File,Image Height,Image Width,Image X,Image "
    "Y,Intensity,Length,Original Reference ID,Particles Per Chain,Perimeter,Ratio Blue/Green,Ratio "
    "Red/Blue,Ratio Red/Green,Roughness,Scatter Area,Scatter Peak,Scatter Width,Sigma Intensity,Source "
    "Image,Sphere Complement,Sphere Count,Sphere Unknown,Sphere Volume,Sum "
    "Intensity,Symmetry,Time,Timestamp,Transparency,Volume (ABD),Volume (ESD),Width"
)
_TEXT_CELLS = {"Date": "2024-04-08", "Image File": "run_{i:06d}.tif", "Original Reference ID": "49162532-FD7F",
               "Time": "11:11:01", "Timestamp": "2024-04-08T11:11:01.303"}


def _write(tmp_path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    """A file in tmp_path with the given bytes (or text in ``encoding``)."""
    path = tmp_path / "lab.csv"
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


def _flowcam_row(i: int) -> str:
    """A made-up VisualSpreadsheet data row (numbers, and text where the instrument writes text)."""
    names = VISUALSPREADSHEET_HEADER.split(",")
    return ",".join(_TEXT_CELLS.get(name, f"{i}.{k:04d}").format(i=i) for k, name in enumerate(names))


def test_a_utf8_bom_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, b"\xef\xbb\xbfimgpaths,label\na.png,camp\n"))
    assert list(lab.frame.columns) == ["imgpaths", "label"] and lab.frame.loc[0, "imgpaths"] == "a.png"
    assert lab.dialect.encoding == "utf-8-sig" and lab.dialect.plain
    assert lab.describe() == "utf-8 with BOM, ',' separated, decimal point"


def test_a_cp1252_file_keeps_its_accented_label(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, "imgpaths,label\na.png,Quercus ilex – é\n", "cp1252"))
    assert lab.frame.loc[0, "label"] == "Quercus ilex – é"  # '–' is 0x96 in cp1252, a control code in latin-1
    assert lab.dialect.encoding == "cp1252" and not lab.dialect.plain and lab.describe().startswith("cp1252, ")


def test_bytes_cp1252_does_not_define_fall_back_to_latin1(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, "imgpaths,label\na.png,Quercus ilex é\x8d\n", "latin-1"))
    assert lab.frame.loc[0, "label"] == "Quercus ilex é\x8d" and lab.dialect.encoding == "latin-1"


def test_semicolons_and_decimal_commas_become_numbers_and_text_stays_text(tmp_path: Path) -> None:
    text = "imgpaths;Width;sample_id;label\na.png;1,25;12,5;Quercus ilex, leaf\nb.png;-3,5e2;7;dust\nc.png;n/a;1;x\n"
    lab = read_lab_csv(_write(tmp_path, text), text_columns={"sample_id"})
    assert lab.dialect.separator == ";" and lab.dialect.decimal == ","
    np.testing.assert_array_equal(lab_number(lab.frame["Width"]), [1.25, -350.0, np.nan])
    assert lab.frame["Width"].tolist() == ["1.25", "-3.5e2", "n/a"]  # the non-number stays as written
    assert lab.frame["sample_id"].tolist() == ["12,5", "7", "1"]  # a text column is never converted
    assert lab.frame.loc[0, "label"] == "Quercus ilex, leaf"
    assert lab.describe() == "utf-8, ';' separated, decimal comma"


def test_lab_number_reads_either_decimal_mark_and_nan_for_the_rest() -> None:
    cells = pd.Series(["1,25", "2.5", "n/a", np.nan], dtype=object)
    np.testing.assert_array_equal(lab_number(cells, decimal=","), [1.25, 2.5, np.nan, np.nan])
    np.testing.assert_array_equal(lab_number(cells), [np.nan, 2.5, np.nan, np.nan])


def test_a_tab_file_whose_header_has_commas_is_read_at_its_tabs(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, "imgpaths\tDiameter (ABD, um)\na.png\t1.5\nb.png\t2\n"))
    assert lab.dialect.separator == "\t" and list(lab.frame.columns) == ["imgpaths", "Diameter (ABD, um)"]
    assert lab.describe() == "utf-8, tab separated, decimal point"


def test_a_visualspreadsheet_export_with_preamble_and_summary_keeps_its_line_numbers(tmp_path: Path) -> None:
    lines = ["List File,C:\\FlowCam\\run.lst", "Start Time,2024-04-08 11:11:01", VISUALSPREADSHEET_HEADER,
             _flowcam_row(1), _flowcam_row(2), "", "Particle Count,2", "Volume Imaged (ml),0.5"]
    lab = read_lab_csv(_write(tmp_path, "\r\n".join(lines) + "\r\n"))
    assert lab.frame.shape == (2, 71) and list(lab.frame.columns) == VISUALSPREADSHEET_HEADER.split(",")
    assert lab.lines.tolist() == [4, 5] and lab.dialect.header_line == 3
    assert lab.frame.loc[1, "Image File"] == "run_000002.tif" and lab.frame.loc[0, "Width"] == "1.0070"
    assert lab.dialect.skipped == (SkippedLine(1, "preamble"), SkippedLine(2, "preamble"), SkippedLine(6, "blank"),
                                   SkippedLine(7, "summary"), SkippedLine(8, "summary"))
    assert lab.describe() == ("utf-8, ',' separated, decimal point, header on line 3, 2 preamble lines skipped "
                              "(1-2), 1 blank line skipped (6), 2 summary lines skipped (7-8)")


def test_quoted_fields_keep_separators_and_newlines_and_lines_count_them(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, 'imgpaths,label\n"a,1.png","two\nlines"\nb.png,camp\n'))
    assert lab.frame["imgpaths"].tolist() == ["a,1.png", "b.png"] and lab.frame.loc[0, "label"] == "two\nlines"
    assert lab.lines.tolist() == [2, 4]


def test_empty_cells_are_nan_and_na_text_is_kept(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, "imgpaths,label\na.png,\nb.png,NA\n"))
    assert pd.isna(lab.frame.loc[0, "label"]) and lab.frame.loc[1, "label"] == "NA"


@pytest.mark.parametrize(("text", "where"), [
    ("imgpaths,label\na.png,camp\nb.png,camp,extra\n", "line 3: 3 fields, but the header (line 1) has 2"),
    ("imgpaths,Width\na.png,1.5,\nb.png,2.5,\n", "line 2: 3 fields, but the header (line 1) has 2"),
    ("imgpaths,label\na.png\nb.png,camp\n", "line 2: 1 field, but the header (line 1) has 2"),
    ('imgpaths,label\na.png,camp\nb.png,"camp\nc.png,dust\n', "line 3: unexpected end of data"),
])
def test_a_malformed_row_is_an_error_naming_its_line(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(LabCsvError, match=re.escape(f"lab.csv {where}")):
        read_lab_csv(_write(tmp_path, text))


@pytest.mark.parametrize(("data", "where"), [
    (b"\xef\xbb\xbfimgpaths,label\na.png,camp\nb.png,\xe9\n", "line 3: starts with a utf-8-sig BOM"),
    ("imgpaths,label\na.png,camp\n".encode("utf-16-le"), "line 1: NUL character"),
])
def test_an_unreadable_file_is_an_error_naming_its_line_not_a_unicode_error(
    tmp_path: Path, data: bytes, where: str
) -> None:
    with pytest.raises(LabCsvError, match=re.escape(f"lab.csv {where}")):
        read_lab_csv(_write(tmp_path, data))


def test_utf16_with_a_bom_is_read(tmp_path: Path) -> None:
    lab = read_lab_csv(_write(tmp_path, "imgpaths\tlabel\na.png\tQuercus ilex – é\n", "utf-16"))
    assert lab.frame.loc[0, "label"] == "Quercus ilex – é" and lab.dialect.encoding == "utf-16"


def test_a_european_export_is_checked_with_the_right_lines_and_values(instrument_dataset: MakeData) -> None:
    manifest = instrument_dataset()
    path = manifest.parent / "camp.csv"
    original = pd.read_csv(path).set_index("imgpaths")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    features = table.columns[2:]
    table[features] = table[features].apply(lambda column: column.str.replace(".", ",", regex=False))
    table.loc[1, "Width"] = "n/a"
    table[SESSION] = "Quercus ilex – é"
    text = "List File;camp.lst\nStart Time;2024-04-08 11:11\n" + table.to_csv(sep=";", index=False) + "Total;3\n"
    path.write_bytes(text.encode("cp1252"))
    part = resolve_part(load_manifest(manifest), "lab", "train")
    report = check_part(part, progress=False, workers=1)
    errors = report.problems[report.problems.severity == "error"]
    assert errors[["kind", "file", "line", "column"]].values.tolist() == [["non_finite", "camp.csv", 5, "Width"]]
    assert "value 'n/a' is not a finite number" in errors.detail.item()
    assert ("csv_dialect: camp.csv: read as cp1252, ';' separated, decimal comma, header on line 3, "
            "2 preamble lines skipped (1-2), 1 summary line skipped (7)") in report.summary()
    listed = [line for line in report.summary().splitlines() if line.startswith("  - ")]
    assert listed[0].startswith("  - csv_dialect: camp.csv")  # how a file was read comes before its errors
    read = read_table(part)
    assert read.loc["camp/camp_000.png", "Perimeter"] == original.loc["camp/camp_000.png", "Perimeter"]
    assert read.loc["camp/camp_002.png", SESSION] == "Quercus ilex – é"
