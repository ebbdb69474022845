"""A lab's own folder or file, recognised and imported into a dataset icecore reads by name.

Recognised layouts (:func:`detect_layout`), each named in every output:

- ``flowcam-raw``: FlowCam raw run folders (or a folder of them): the particle CSV, the collage sheets the crops
  are cut from (by the CSV's ``Image X/Y/Width/Height``, checked against the ``_bin.tif`` mask sheets), the run
  summary (fluid volume imaged -> concentrations) and the VisualSpreadsheet class file (``.cla``: the particles
  a person classified become the labelled part). Every particle of every run is the core, one sample per run.
- ``class-folders``: crops sorted into ``<label>/`` folders, with or without a feature CSV keyed by file name
  (found in the folder or beside it).
- ``csv``: a CSV with an ``imgpaths`` column next to a zip or folder of images (labelled when it has a label column).
- ``images``: images only: the FlowCam features are computed from the crops, and every output says so.

:func:`import_path` writes ``<cache>/imported/<name>-<key>/``: canonical CSVs (our column names, plus each row's
source file and line so a problem names the lab's own file), the cut crops, ``runs.csv`` (the run summaries),
``import.json`` (layout, notes, digests of the lab's files) and ``manifest.yaml`` (one dataset entry). The key
is a digest of the source's file listing (names, sizes, times): the same folder is imported once and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..files import atomic_write_text
from ..images.collage import CropBox, copy_members, cut_crops
from ..images.decode import decode_gray
from ..images.features import PIXEL_UM, features_frame
from ..images.sources import FolderSource, is_image_name, sha256_file
from ..schema import FLOWCAM_FEATURES, IMGPATH, LABEL, SAMPLE, SESSION, VOLUME
from . import flowcam
from .labcsv import SOURCE_FILE, SOURCE_LINE, LabCsv, lab_columns, read_lab_csv

LAYOUTS = ("flowcam-raw", "class-folders", "csv", "images")
IMPORT_VERSION = 1
CROPS = "crops.zip"
TRAIN_CROPS = "train_crops.zip"
LABEL_COLUMNS = ("label", "Label", "class", "Class", "category", "Category")
_UUID_NAME = re.compile(r"^(.+)_[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\.\w+$")
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class LayoutError(ValueError):
    """A path whose layout is not one icecore recognises, or whose files contradict each other."""


@dataclass(frozen=True)
class Imported:
    """An imported source: the dataset's name in its generated manifest, where it lives, and what was found."""

    name: str
    layout: str
    source: Path
    folder: Path
    notes: tuple[str, ...] = ()
    digests: dict[str, str] = field(default_factory=dict)  # sha256 of the lab's files read, relative to source

    @property
    def manifest(self) -> Path:
        """The generated manifest holding this one dataset."""
        return self.folder / "manifest.yaml"

    def describe(self) -> str:
        """What was recognised, for the console: layout, source, and the notes."""
        lines = [f"{self.source}: layout {self.layout} -> dataset {self.name!r} ({self.folder})"]
        return "\n".join([*lines, *(f"  - {note}" for note in self.notes)])


@dataclass
class _Part:
    """One part being built: its canonical rows and the image source they point into."""

    rows: pd.DataFrame
    images: Path


@dataclass
class _Build:
    """What an importer hands back: parts, classes, run summaries, notes and digests of the files it read."""

    parts: dict[str, _Part]
    notes: list[str] = field(default_factory=list)
    runs: pd.DataFrame | None = None
    digests: dict[str, str] = field(default_factory=dict)


def _class_dirs(path: Path) -> list[Path]:
    """Sub-folders of ``path`` that hold image files (anywhere beneath them)."""
    return [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".") and _has_images(d)]


def _has_images(folder: Path) -> bool:
    """Whether any image file lies in or under ``folder``."""
    return any(is_image_name(f) for _, _, files in os.walk(folder) for f in files)


def _imgpath_csvs(path: Path) -> list[Path]:
    """CSV files in a folder (or the file itself) whose header names an ``imgpaths`` column."""
    candidates = [path] if path.is_file() else sorted(path.glob("*.csv"))
    return [c for c in candidates if IMGPATH in lab_columns(c)]


def detect_layout(path: Path) -> str:
    """Which of ``LAYOUTS`` a path is; an error says what was looked for."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".csv" and _imgpath_csvs(path):
            return "csv"
        raise LayoutError(f"{path}: a file must be a CSV with an {IMGPATH!r} column next to its images")
    if flowcam.find_runs(path):
        return "flowcam-raw"
    if _imgpath_csvs(path):
        return "csv"
    if _class_dirs(path):
        return "class-folders"
    if any(is_image_name(p.name) for p in path.iterdir()):
        return "images"
    raise LayoutError(
        f"{path}: no recognised layout. Expected one of: FlowCam raw run folders (<run>.csv with collage TIFFs), "
        f"crops in class folders (<label>/*.png), a CSV with an {IMGPATH!r} column beside its images, or a folder "
        "of crops")


def source_key(path: Path) -> str:
    """A digest of the files an import reads (name, size, modification time): changes when the data does.

    A folder's files count, and the CSVs beside it (a class-folder tree's feature CSV may lie next to it).
    """
    digest = hashlib.sha256(f"{IMPORT_VERSION}\0{path.resolve()}".encode())
    files = [path] if path.is_file() else [*path.rglob("*"), *path.parent.glob("*.csv")]
    for file in sorted(f for f in files if f.is_file()):
        st = file.stat()
        digest.update(f"{os.path.relpath(file, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def default_name(path: Path) -> str:
    """A dataset name from a path: its folder's parent and name, e.g. ``flowcam-vickot-raw``."""
    path = Path(path).resolve()
    stem = path.stem if path.is_file() else path.name
    return _NAME.sub("-", f"{path.parent.name}-{stem}").strip("-").lower()


def import_path(
    path: Path | str, cache_dir: Path, *, name: str = "", pixel_um: float | None = None, progress: bool = True
) -> Imported:
    """Import a lab's folder or file once (reused while its files are unchanged) and return where it is."""
    path = Path(path).expanduser().resolve()
    layout = detect_layout(path)
    name = name or default_name(path)
    folder = Path(cache_dir) / "imported" / f"{name}-{source_key(path)}"
    if not (folder / "import.json").is_file():
        partial = folder.with_name(f".{folder.name}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build = _IMPORTERS[layout](path, partial, pixel_um=pixel_um, progress=progress)
        _write(build, partial, name=name, layout=layout, source=path)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    record = json.loads((folder / "import.json").read_text(encoding="utf-8"))
    return Imported(name, layout, path, folder, tuple(record["notes"]), dict(record["sha256"]))


def _write(build: _Build, folder: Path, *, name: str, layout: str, source: Path) -> None:
    """The canonical CSVs, run table, import record and manifest of a finished build."""
    parts = {}
    for part, spec in build.parts.items():
        spec.rows.to_csv(folder / f"{part}.csv", index=False)
        parts[part] = {"csv": f"{part}.csv", "images": str(spec.images)}
    if build.runs is not None:
        build.runs.to_csv(folder / "runs.csv", index=False)
    labels = sorted(build.parts["train"].rows[LABEL].dropna().unique()) if "train" in build.parts else []
    if not labels:
        build.notes.append("no labels found: the data is a core only; training needs a labelled part")
    entry = {"description": f"{layout} import of {source}", "source": {"path": str(source), "layout": layout},
             "root": ".", "parts": parts}
    if labels:
        entry["classes"] = {label: label for label in labels}
    manifest = {"classes": entry.get("classes") or {"unlabelled": "unlabelled"}, "datasets": {name: entry}}
    record = {"version": IMPORT_VERSION, "name": name, "layout": layout, "source": str(source),
              "classes": labels, "parts": {p: len(s.rows) for p, s in build.parts.items()},
              "notes": build.notes, "sha256": build.digests}
    atomic_write_text(folder / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))
    atomic_write_text(folder / "import.json", json.dumps(record, indent=1) + "\n")


def _canonical(frame: pd.DataFrame, lines: np.ndarray, source: str) -> pd.DataFrame:
    """Our table columns from a lab's frame (features by their FlowCam names), with each row's file and line."""
    ours = [c for c in (IMGPATH, LABEL, SESSION, SAMPLE, VOLUME, *FLOWCAM_FEATURES) if c in frame.columns]
    return frame[ours].assign(**{SOURCE_FILE: source, SOURCE_LINE: lines})


def _check_features(frame: pd.DataFrame, where: str) -> list[str]:
    """Add derived biovolumes, then refuse a table that still lacks FlowCam features (naming them)."""
    added = flowcam.derived_biovolumes(frame)
    missing = [c for c in FLOWCAM_FEATURES if c not in frame.columns]
    if missing:
        raise LayoutError(f"{where}: feature column(s) {missing} are missing; export every VisualSpreadsheet "
                          "column, or import the crops without the CSV to compute the features from the images")
    return [f"{', '.join(added)} computed from Length and Width (not in the CSV)"] if added else []


def _import_raw(path: Path, folder: Path, *, pixel_um: float | None, progress: bool) -> _Build:
    """FlowCam raw run folders: crops cut from the collages, one core sample per run, classified particles as train."""
    runs = flowcam.find_runs(path)
    rows, boxes, summaries, notes, digests = [], [], [], [], {}
    for run in runs:
        csv = read_lab_csv(run.csv)
        where = str(run.csv.relative_to(path.parent))
        frame = csv.frame
        needed = [flowcam.PARTICLE_ID, flowcam.IMAGE_FILE, *flowcam.BOX_COLUMNS]
        lacking = [c for c in needed if c not in frame.columns]
        if lacking:
            raise LayoutError(f"{where}: column(s) {lacking} are missing; they place each crop on its collage sheet")
        notes += _check_features(frame, where)
        ids = pd.to_numeric(frame[flowcam.PARTICLE_ID], errors="coerce")
        if ids.isna().any():
            line = int(csv.lines[int(np.flatnonzero(ids.isna().to_numpy())[0])])
            raise LayoutError(f"{where} line {line}: {flowcam.PARTICLE_ID!r} is not a whole number")
        frame = frame.assign(**{IMGPATH: [f"{run.name}/{int(i):06d}.png" for i in ids], SESSION: run.name,
                                SAMPLE: run.name})
        boxes += _boxes(frame, csv.lines, run, where)
        summary = flowcam.read_run_summary(run.summary) if run.summary else None
        summaries.append(_run_row(run, summary, len(frame)))
        notes += _summary_notes(run, summary, len(frame))
        if summary is not None and summary.fluid_volume_ml:
            frame[VOLUME] = repr(summary.fluid_volume_ml)
        if run.classes is not None:
            labels = flowcam.read_class_file(run.classes)
            frame[LABEL] = ids.astype(int).map(labels).to_numpy()
            notes += _filter_note(run.classes)
        digests |= {str(p.relative_to(path)): sha256_file(p) for p in (run.csv, run.summary, run.classes) if p}
        rows.append(_canonical(frame, csv.lines, where))
    notes += _cut_all(boxes, folder / CROPS, progress)
    core = pd.concat(rows, ignore_index=True)
    parts = {"core": _Part(core.drop(columns=[LABEL], errors="ignore"), Path(CROPS))}
    if LABEL in core.columns and core[LABEL].notna().any():
        train = core[core[LABEL].notna()].reset_index(drop=True)
        copy_members(folder / CROPS, folder / TRAIN_CROPS, set(train[IMGPATH]))
        parts = {"train": _Part(train, Path(TRAIN_CROPS)), **parts}
        notes.append(f"{len(train):,} particles classified in VisualSpreadsheet class files are the labelled part "
                     f"({', '.join(f'{k} {v:,}' for k, v in train[LABEL].value_counts().items())}); the core holds "
                     "every particle of the runs, those included")
    notes.insert(0, f"{len(runs)} FlowCam run folder(s), {len(core):,} particles; one sample per run")
    return _Build(parts, list(dict.fromkeys(notes)), pd.DataFrame(summaries), digests)


def _filter_note(path: Path) -> list[str]:
    """A warning when a class file's classes come from VisualSpreadsheet value filters rather than a person."""
    if ".flt" not in path.read_text(encoding="latin-1").lower():
        return []
    return ["the class files' classes were assigned by VisualSpreadsheet value filters (.flt), not by a person: "
            "check them (the explorer's review) before trusting models trained on them"]


def _boxes(frame: pd.DataFrame, lines: np.ndarray, run: flowcam.RunFolder, where: str) -> list[CropBox]:
    """Each particle's crop box on its collage sheet (in the run's folder; the CSV may give a path from the PC)."""
    numbers = frame[list(flowcam.BOX_COLUMNS)].apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().any(axis=1).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        column = numbers.columns[numbers.iloc[row].isna().to_numpy()][0]
        raise LayoutError(f"{where} line {int(lines[row])}, column {column!r}: "
                          f"{frame[column].iloc[row]!r} is not a whole number")
    sheets = frame[flowcam.IMAGE_FILE].str.replace("\\", "/").str.rsplit("/", n=1).str[-1]
    return [CropBox(name, run.path / sheet, int(x), int(y), int(w), int(h), int(line))
            for name, sheet, (x, y, w, h), line in zip(frame[IMGPATH], sheets, numbers.to_numpy(), lines)]


def _cut_all(boxes: list[CropBox], dest: Path, progress: bool) -> list[str]:
    """Cut every crop and say what could not be cut."""
    report = cut_crops(boxes, dest, progress=progress)
    notes = [f"{len(report.written):,} crops cut from {report.sheets} collage sheet(s)"
             + (f", checked against {report.masks} mask sheet(s)" if report.masks else " (no mask sheets found)")]
    if report.failed:
        first = "; ".join(f"{k}: {v}" for k, v in list(report.failed.items())[:3])
        notes.append(f"{len(report.failed):,} crop(s) could not be cut (their rows are reported as missing images): "
                     f"{first}")
    if report.empty_mask:
        notes.append(f"{len(report.empty_mask):,} crop box(es) hold no particle pixel in the mask sheet, e.g. "
                     f"{', '.join(report.empty_mask[:3])}")
    return notes


def _run_row(run: flowcam.RunFolder, summary: flowcam.RunSummary | None, n_rows: int) -> dict[str, object]:
    """One row of runs.csv: the run, its particle rows and its summary's numbers."""
    fields = dataclasses.asdict(summary) if summary else {}
    fields.pop("path", None)
    return {"run": run.name, SAMPLE: run.name, "particles_in_csv": n_rows,
            "summary": str(run.summary) if run.summary else "", **fields}


def _summary_notes(run: flowcam.RunFolder, summary: flowcam.RunSummary | None, n_rows: int) -> list[str]:
    """What a run summary leaves unknown or contradicts."""
    if summary is None:
        return [f"{run.name}: no run summary: its particles per ml are unknown (no {VOLUME})"]
    notes = []
    if not summary.fluid_volume_ml:
        notes.append(f"{run.name}: the run summary gives no Fluid Volume Imaged: particles per ml are unknown")
    if summary.particle_count is not None and summary.particle_count != n_rows:
        notes.append(f"{run.name}: the run summary counts {summary.particle_count:,} particles, the CSV has "
                     f"{n_rows:,} rows")
    return notes


def _image_names(folder: Path) -> list[str]:
    """Every image under a folder, as names relative to it."""
    return sorted(FolderSource(folder).names())


def _feature_csv(path: Path, names: Iterable[str]) -> tuple[Path, str, LabCsv] | None:
    """The CSV (in the folder or beside it) with a column of the crops' file names, that column, and the CSV read."""
    basenames = {n.rsplit("/", 1)[-1] for n in names}
    best = None
    for csv_path in sorted([*path.glob("*.csv"), *path.parent.glob("*.csv")]):
        csv = read_lab_csv(csv_path)
        frame = csv.frame
        for column in frame.columns:
            values = frame[column].dropna().astype(str).str.replace("\\", "/").str.rsplit("/", n=1).str[-1]
            share = values.isin(basenames).mean() if len(values) else 0.0
            if share >= 0.5 and (best is None or share > best[0]):
                best = (share, csv_path, column, csv)
    return None if best is None else best[1:]


def _session(basenames: pd.Series) -> pd.Series | None:
    """The acquisition run from VisualSpreadsheet crop names ``<run>_<uuid>.png``, when every name has that form."""
    runs = basenames.str.extract(_UUID_NAME, expand=False)
    return runs if runs.notna().all() else None


def _import_classes(path: Path, folder: Path, *, pixel_um: float | None, progress: bool) -> _Build:
    """Crops in class folders: labels from the folders, features from a CSV keyed by file name or from the crops."""
    labels = {d.name for d in _class_dirs(path)}
    names = [n for n in _image_names(path) if "/" in n and n.split("/", 1)[0] in labels]
    images = pd.DataFrame({IMGPATH: names, LABEL: [n.split("/", 1)[0] for n in names]})
    images["basename"] = images[IMGPATH].str.rsplit("/", n=1).str[-1]
    found = _feature_csv(path, names)
    notes = [f"{len(names):,} crops in {images[LABEL].nunique()} class folder(s): "
             + ", ".join(f"{k} {v:,}" for k, v in images[LABEL].value_counts().items())]
    if found is None:
        rows = _computed_rows(path, images, pixel_um, progress)
        notes.append(_computed_note(pixel_um))
        digests = {}
    else:
        csv_path, key, csv = found
        rows, more = _joined_rows(csv, csv_path.name, key, images, path)
        notes += more
        digests = {os.path.relpath(csv_path, path): sha256_file(csv_path)}
    session = _session(rows[IMGPATH].str.rsplit("/", n=1).str[-1])
    if session is not None:
        rows.insert(2, SESSION, session)
        notes.append(f"session = the FlowCam run in each crop's name ({session.nunique()} runs)")
    return _Build({"train": _Part(rows, path)}, notes, None, digests)


def _joined_rows(csv: LabCsv, where: str, key: str, images: pd.DataFrame, path: Path
                 ) -> tuple[pd.DataFrame, list[str]]:
    """The feature CSV's rows joined to the crops by file name (labels from the folders)."""
    frame = csv.frame.copy()
    notes = [f"features from {where} (joined on its {key!r} column; {csv.dialect.describe()})"]
    notes += _check_features(frame, where)
    basename = frame[key].astype(str).str.replace("\\", "/").str.rsplit("/", n=1).str[-1]
    place = images.drop_duplicates("basename").set_index("basename")
    label_column = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
    if label_column is not None:
        theirs = frame[label_column]
        folder_label = basename.map(place[LABEL])
        differ = int((folder_label.notna() & theirs.notna() & (folder_label != theirs)).sum())
        if differ:
            notes.append(f"{differ:,} row(s) of {where} name a class other than their crop's folder; "
                         "the folder (where a person sorted the crop) is used")
        frame = frame.drop(columns=[label_column])
    frame[IMGPATH] = basename.map(place[IMGPATH]).fillna(basename)
    frame[LABEL] = basename.map(place[LABEL])
    unmatched = int(frame[LABEL].isna().sum())
    if unmatched:
        notes.append(f"{unmatched:,} row(s) of {where} have no crop in {path.name}/ (reported as missing images)")
    return _canonical(frame, csv.lines, where), notes


def _computed_rows(path: Path, images: pd.DataFrame, pixel_um: float | None, progress: bool) -> pd.DataFrame:
    """Rows whose FlowCam features are computed from the crops themselves."""
    source = FolderSource(path)
    crops = (decode_gray(source.read(n), n) for n in images[IMGPATH])
    features = features_frame(crops, list(images[IMGPATH]), pixel_um or PIXEL_UM, progress=progress)
    rows = images.drop(columns=["basename"]).join(features.reset_index(drop=True).map(repr))
    return rows.assign(**{SOURCE_FILE: path.name, SOURCE_LINE: pd.NA})


def _computed_note(pixel_um: float | None) -> str:
    """The note every output of computed features carries."""
    scale = f"{pixel_um} um per pixel" if pixel_um else f"the default {PIXEL_UM} um per pixel (give --pixel-um)"
    return (f"no feature CSV: the 34 FlowCam features are COMPUTED from the crops (icecore's own segmentation, "
            f"{scale}), not the instrument's")


def _import_images(path: Path, folder: Path, *, pixel_um: float | None, progress: bool) -> _Build:
    """A folder of crops only: a core with computed features."""
    names = [n for n in _image_names(path) if "/" not in n]
    images = pd.DataFrame({IMGPATH: names, "basename": names})
    rows = _computed_rows(path, images, pixel_um, progress)
    return _Build({"core": _Part(rows, path)}, [f"{len(names):,} crops, no labels", _computed_note(pixel_um)])


def _import_csv(path: Path, folder: Path, *, pixel_um: float | None, progress: bool) -> _Build:
    """A CSV with imgpaths next to a zip or folder: labelled (train) when it has a label column, else a core."""
    csv_path = _imgpath_csvs(path)[0]
    csv = read_lab_csv(csv_path)
    frame = csv.frame.copy()
    where = csv_path.name
    notes = [f"{where}: {len(frame):,} rows ({csv.dialect.describe()})", *_check_features(frame, where)]
    label_column = next((c for c in LABEL_COLUMNS if c in frame.columns), None)
    if label_column is not None and label_column != LABEL:
        frame = frame.rename(columns={label_column: LABEL})
    images = _images_beside(csv_path)
    notes.append(f"images: {images.name}")
    part = "train" if LABEL in frame.columns else "core"
    digests = {where: sha256_file(csv_path)} | ({images.name: sha256_file(images)} if images.is_file() else {})
    return _Build({part: _Part(_canonical(frame, csv.lines, where), images)}, notes, None, digests)


def _images_beside(csv_path: Path) -> Path:
    """The zip or folder of images next to a CSV: same stem first, else the only one there."""
    base = csv_path.parent
    for candidate in (base / f"{csv_path.stem}.zip", base / csv_path.stem):
        if candidate.exists():
            return candidate
    found = [p for p in sorted(base.iterdir()) if p.suffix.lower() == ".zip" or (p.is_dir() and _has_images(p))]
    if len(found) == 1:
        return found[0]
    if not found and any(is_image_name(p.name) for p in base.iterdir()):
        return base
    raise LayoutError(f"{csv_path}: cannot tell which images it belongs to; found {[p.name for p in found]} "
                      f"(name the zip or folder {csv_path.stem}.zip / {csv_path.stem}/)")


_IMPORTERS = {"flowcam-raw": _import_raw, "class-folders": _import_classes, "csv": _import_csv,
              "images": _import_images}
