"""What a FlowCam / VisualSpreadsheet run folder holds, read: the run summary, the class file, the run's files,
and the features VisualSpreadsheet does not always export (computed from the ones it does, and said so).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# VisualSpreadsheet's particle CSV columns that place a particle's crop on its collage sheet.
PARTICLE_ID = "Particle ID"
IMAGE_FILE = "Image File"
BOX_COLUMNS = ("Image X", "Image Y", "Image Width", "Image Height")
CALIBRATION = "Calibration Factor"
ESD = "Diameter (ESD)"
_HEADER_PEEK = 65536
_SUMMARY_LINE = re.compile(r"^\s*([^:]+?)\s*:\s*(.*?)\s*$")
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)?(?:[eE][-+]?\d+)?")


class FlowCamError(ValueError):
    """A run folder file that does not read as VisualSpreadsheet writes it, naming the file and line."""


@dataclass(frozen=True)
class RunSummary:
    """The numbers of a ``<run>_run_summary.txt`` a concentration needs, and where they came from."""

    path: Path
    fluid_volume_ml: float | None  # Fluid Volume Imaged: the meltwater the counted particles were in
    particle_count: int | None
    flow_rate_ml_min: float | None
    magnification: str | None
    calibration_um_px: float | None
    start: str | None
    software: str | None


@dataclass(frozen=True)
class RunFolder:
    """One raw run folder: its name, particle CSV, and (when present) run summary and class file."""

    path: Path
    name: str
    csv: Path
    summary: Path | None
    classes: Path | None


def _first_number(text: str | None) -> float | None:
    """The first number in a summary value such as '0.0290 ml' (None when there is none)."""
    match = _NUMBER.search(text or "")
    return float(match.group().replace(",", ".")) if match else None


def read_run_summary(path: Path) -> RunSummary:
    """Parse a run summary's ``Key: value`` lines (first occurrence of each key wins)."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        match = _SUMMARY_LINE.match(line)
        if match and match.group(2):
            values.setdefault(match.group(1).lower(), match.group(2))
    count = _first_number(values.get("particle count"))
    return RunSummary(
        path=path, fluid_volume_ml=_first_number(values.get("fluid volume imaged")),
        particle_count=None if count is None else int(count),
        flow_rate_ml_min=_first_number(values.get("flow rate")), magnification=values.get("magnification"),
        calibration_um_px=_first_number(values.get("calibration factor")), start=values.get("start"),
        software=values.get("software"),
    )


def read_class_file(path: Path) -> pd.Series:
    """A VisualSpreadsheet class file (``.cla``) as particle id -> class name.

    Layout (v3): version, number of class sets, then per set its name and number of classes, and per class its
    name, the filter combination, the number of filters and their paths, the number of particles and their ids.
    A particle listed in two classes is left out (its class is not known).
    """
    lines = path.read_text(encoding="latin-1").splitlines()
    cursor = _Cursor(path, lines)
    if not cursor.text().lower().startswith("v"):
        raise FlowCamError(f"{path} line 1: expected a version such as 'v3', got {lines[0]!r}")
    members: dict[int, list[str]] = {}
    for _ in range(cursor.integer()):
        cursor.text()  # the class set's name
        for _ in range(cursor.integer()):
            name = cursor.text()
            cursor.text()  # how its filters combine (OR / AND)
            for _ in range(cursor.integer()):
                cursor.text()  # a filter file's path on the acquisition PC
            for _ in range(cursor.integer()):
                members.setdefault(cursor.integer(), []).append(name)
    single = {pid: names[0] for pid, names in members.items() if len(set(names)) == 1}
    return pd.Series(single, name="label", dtype="str").rename_axis(PARTICLE_ID)


class _Cursor:
    """Reads a class file line by line, failing with the file and line number."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        self.path, self.lines, self.at = path, lines, 0

    def text(self) -> str:
        """The next line, stripped."""
        if self.at >= len(self.lines):
            raise FlowCamError(f"{self.path}: ends at line {self.at} in the middle of a class list")
        self.at += 1
        return self.lines[self.at - 1].strip()

    def integer(self) -> int:
        """The next line as a whole number."""
        value = self.text()
        if not value.isdigit():
            raise FlowCamError(f"{self.path} line {self.at}: expected a whole number, got {value!r}")
        return int(value)


def is_particle_csv(path: Path) -> bool:
    """Whether a CSV's first lines hold VisualSpreadsheet's particle header (Particle ID ... Image File ...)."""
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_PEEK).decode("latin-1")
    return PARTICLE_ID in head and IMAGE_FILE in head and all(c in head for c in BOX_COLUMNS)


def run_folder(folder: Path) -> RunFolder | None:
    """The run in a folder, when the folder holds a particle CSV (``<run>.csv`` preferred) with collage sheets."""
    csvs = sorted(p for p in folder.glob("*.csv") if not p.stem.endswith("_summary") and is_particle_csv(p))
    if not csvs:
        return None
    csv = next((p for p in csvs if p.stem == folder.name), csvs[0])
    summary = folder / f"{csv.stem}_run_summary.txt"
    cla = folder / f"{csv.stem}.cla"
    return RunFolder(folder, csv.stem, csv, summary if summary.is_file() else None, cla if cla.is_file() else None)


def find_runs(path: Path) -> list[RunFolder]:
    """Every raw run folder at or under ``path``, sorted by folder."""
    runs = []
    for folder, dirs, _ in os.walk(path):
        dirs.sort()
        found = run_folder(Path(folder))
        if found is not None:
            runs.append(found)
    return runs


def derived_biovolumes(frame: pd.DataFrame) -> list[str]:
    """Add the biovolumes VisualSpreadsheet did not export, from Length and Width (um); returns those added.

    Cylinder: pi/4 W^2 L; prolate spheroid: pi/6 W^2 L (VisualSpreadsheet's definitions). A Length or Width
    that is not a number leaves the biovolume empty, and validation names the bad cell.
    """
    if "Length" not in frame or "Width" not in frame:
        return []
    length = pd.to_numeric(frame["Length"], errors="coerce")
    width = pd.to_numeric(frame["Width"], errors="coerce")
    added = []
    for column, factor in (("Biovolume (Cylinder)", math.pi / 4), ("Biovolume (P. Spheroid)", math.pi / 6)):
        if column not in frame:
            frame[column] = (factor * width**2 * length).map(lambda v: "" if pd.isna(v) else repr(float(v)))
            added.append(column)
    return added
