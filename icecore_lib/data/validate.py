"""Read a part's CSV(s) into the particle table and check it against its images and checksums.

:func:`check_part` lists every problem with its kind and where it is (CSV file + line, column, image
member): rows without an image, images without a row, undecodable images, NaN/inf/non-numeric features,
depths and volumes, unknown labels, missing columns, duplicate ids, checksum mismatches; and, as warnings,
CSVs not read as plain UTF-8 / ',' / '.', crops under ``TINY_CROP`` px and colour crops made gray. CSVs are
read by :func:`~icecore_lib.data.labcsv.read_lab_csv`; line numbers are those a text editor shows (the header
is its own line), or the lab's file and line from ``source_file``/``source_line`` columns when a row has them.
Callers are strict by default: they raise :class:`DataError` (which carries the report) unless asked to skip
the bad particles (``report.bad_ids``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write_text
from ..images.decode import DecodeResult, decode_many
from ..images.sources import ImageSource, UnsafeSourceError, normalize_name, open_source, sha256_file
from ..schema import DEPTH, FLOWCAM_FEATURES, IMGPATH, LABEL, PARTICLE_ID, SAMPLE, SESSION, VOLUME
from .labcsv import SOURCE_FILE, SOURCE_LINE, LabCsvError, lab_number, read_lab_csv
from .manifest import PARTS_WITH_IMAGES, TABLE_COLUMNS, CsvFile, ResolvedPart

ERROR = "error"
WARNING = "warning"
PROBLEM_COLUMNS = ("kind", "severity", "file", "line", "column", "particle_id", "detail")
TEXT_COLUMNS = (LABEL, SESSION, SAMPLE)
# Number columns: features must be finite numbers; depth and volume may be empty, but what is written is a number.
NUMBER_COLUMNS = (*FLOWCAM_FEATURES, DEPTH, VOLUME)
# A crop narrower or shorter than this (px) is packed but reported: stretched to the image size it shows nothing.
TINY_CROP = 3
_FILE, _LINE = "_file", "_line"
# Problems that make a table unusable as a whole (read_table raises on them even without images).
STRUCTURAL = ("unreadable_csv", "missing_column", "missing_imgpath", "unsafe_path", "duplicate_id")


class DataError(ValueError):
    """Data that failed validation; ``report`` lists every problem."""

    def __init__(self, report: CheckReport, hint: str = "") -> None:
        super().__init__(report.summary() + (f"\n{hint}" if hint else ""))
        self.report = report


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data, and where it is."""

    kind: str
    file: str
    line: int | None = None
    column: str | None = None
    particle_id: str | None = None
    detail: str = ""
    severity: str = ERROR


@dataclass(frozen=True)
class CheckReport:
    """Every problem found in one part, and the particles to drop when skipping bad items."""

    name: str
    n_rows: int
    n_images: int
    problems: pd.DataFrame
    bad_ids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings such as images without a row are allowed)."""
        return not (self.problems["severity"] == ERROR).any()

    def with_problems(self, problems: Iterable[Problem], bad_ids: Iterable[str] = ()) -> CheckReport:
        """A copy with more problems and bad particles added."""
        merged = pd.concat([self.problems, problems_frame(problems)], ignore_index=True)
        bad = tuple(sorted(set(self.bad_ids) | set(bad_ids)))
        return CheckReport(self.name, self.n_rows, self.n_images, merged, bad)

    def summary(self, limit: int = 20) -> str:
        """A readable report: counts per kind, then the first ``limit`` problems (CSV dialects, errors, warnings)."""
        p = self.problems
        n_err = int((p["severity"] == ERROR).sum())
        head = (f"{self.name}: {self.n_rows:,} rows, {self.n_images:,} images: "
                f"{n_err:,} error(s), {len(p) - n_err:,} warning(s)")
        if self.bad_ids:
            head += f"; {len(self.bad_ids):,} particle(s) to drop with skip_bad"
        if p.empty:
            return head + " - OK"
        counts = p.groupby(["severity", "kind"]).size()
        lines = [head, *(f"  {n:,} {sev}(s) {kind}" for (sev, kind), n in counts.items())]
        rank = np.where(p["kind"] == "csv_dialect", 0, np.where(p["severity"] == ERROR, 1, 2))
        ordered = p.iloc[np.argsort(rank, kind="stable")]
        lines += [f"  - {describe(row)}" for row in ordered.head(limit).itertuples(index=False)]
        if len(p) > limit:
            lines.append(f"  ... and {len(p) - limit:,} more (see report.problems or the saved report)")
        return "\n".join(lines)

    def __str__(self) -> str:
        """The summary."""
        return self.summary()

    def to_json(self, path: Path | str | None = None) -> str:
        """The report as JSON text, also written atomically to ``path`` when given."""
        records = self.problems.astype(object).where(self.problems.notna(), None).to_dict("records")
        payload = {"name": self.name, "ok": self.ok, "n_rows": self.n_rows, "n_images": self.n_images,
                   "bad_ids": list(self.bad_ids), "problems": records}
        text = json.dumps(payload, indent=1, default=int)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_json(cls, text: str) -> CheckReport:
        """A report read back from :meth:`to_json` output."""
        raw = json.loads(text)
        problems = problems_frame(Problem(**record) for record in raw["problems"])
        return cls(raw["name"], raw["n_rows"], raw["n_images"], problems, tuple(raw["bad_ids"]))


def problems_frame(problems: Iterable[Problem]) -> pd.DataFrame:
    """Problems as a DataFrame with the columns of ``PROBLEM_COLUMNS`` (line as nullable int)."""
    frame = pd.DataFrame([asdict(p) for p in problems], columns=list(PROBLEM_COLUMNS))
    return frame.astype({"line": "Int64"})


def describe(problem: object) -> str:
    """One problem as a line of text: kind, where (file, line, column, particle) and what."""
    where = str(problem.file)
    if pd.notna(problem.line):
        where += f" line {problem.line}"
    if pd.notna(problem.column):
        where += f", column {problem.column!r}"
    if pd.notna(problem.particle_id):
        where += f" [{problem.particle_id}]"
    return f"{problem.kind}: {where}: {problem.detail}"


@dataclass(frozen=True)
class Inspection:
    """What reading a part found: every row (with its CSV and line), the images and the report."""

    part: ResolvedPart
    rows: pd.DataFrame  # one row per CSV row with an id: particle_id, _file, _line, table columns
    report: CheckReport
    source: ImageSource | None
    listing: tuple[str, ...]  # image names in the source (near the rows, for folders)
    digests: dict[Path, str]  # sha256 of every CSV and every file pinned in the manifest

    def table(self, drop: Iterable[str] = ()) -> pd.DataFrame:
        """The particle table indexed by ``particle_id``, without the ``drop`` ids."""
        return to_table(self.rows, drop)


def inspect_part(part: ResolvedPart, classes: Iterable[str] | None = None) -> Inspection:
    """Read a part's CSVs, list its images and verify checksums; every check but decoding."""
    rows, problems, bad = _read_rows(part, classes)
    digests = {c.path: sha256_file(c.path) for c in part.csvs}
    digests |= {path: digests.get(path) or sha256_file(path) for path in part.sha256}
    problems += [
        Problem("checksum", str(path), detail=f"sha256 is {digests[path]}, the manifest expects {expected}")
        for path, expected in part.sha256.items() if digests[path] != expected
    ]
    source, listing = None, ()
    if part.images is not None:
        source = open_source(part.images)
        listing = tuple(source.names(near=rows[PARTICLE_ID]))
        image_problems, missing = _image_problems(rows, listing, part.images.name)
        problems += image_problems
        bad |= missing
    report = CheckReport(part.name, len(rows), len(listing), problems_frame(problems), tuple(sorted(bad)))
    return Inspection(part, rows, report, source, listing, digests)


def check_part(
    part: ResolvedPart,
    classes: Iterable[str] | None = None,
    *,
    decode: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> CheckReport:
    """Every problem of a part (``decode``: also decode every image, in parallel over ``workers``)."""
    inspection = inspect_part(part, classes)
    if not decode or inspection.source is None:
        return inspection.report
    present = sorted(set(inspection.rows[PARTICLE_ID]) & set(inspection.listing))
    result = decode_many(inspection.source, present, workers=workers, progress=progress)
    return inspection.report.with_problems(decode_problems(result, present, inspection.source), result.errors)


def decode_problems(result: DecodeResult, names: Sequence[str], source: ImageSource) -> list[Problem]:
    """What decoding ``names`` found: failures (errors), tiny crops and a count of colour crops made gray (warnings)."""
    where = source.path.name
    problems = [Problem("undecodable", where, particle_id=name, detail=why) for name, why in result.errors.items()]
    decoded = (result.shapes > 0).all(axis=1)
    for i in np.flatnonzero(decoded & (result.shapes.min(axis=1) < TINY_CROP)):
        height, width = result.shapes[i]
        problems.append(Problem("tiny_crop", where, particle_id=names[i], severity=WARNING,
                                detail=f"crop is {width}x{height} px (width x height), under {TINY_CROP} px on a "
                                       "side: packed, but stretched to the image size it shows next to nothing"))
    n_colour = int(result.colour.sum())
    if n_colour:
        problems.append(Problem("colour_to_gray", where, severity=WARNING,
                                detail=f"{n_colour:,} of {len(names):,} crop(s) are colour images, converted to gray "
                                       "with ITU-R 601 luma (L = 0.299 R + 0.587 G + 0.114 B)"))
    return problems


def read_table(part: ResolvedPart) -> pd.DataFrame:
    """The particle table of a part (CSVs concatenated, labels and column mapping applied), indexed by id.

    Raises :class:`DataError` naming the file/line/column on unreadable CSVs, missing columns and
    duplicate ids; feature values and images are left to :func:`check_part`.
    """
    rows, problems, _ = _read_rows(part, classes=None)
    structural = [p for p in problems if p.kind in STRUCTURAL]
    if structural:
        raise DataError(CheckReport(part.name, len(rows), 0, problems_frame(structural)))
    return to_table(rows)


def to_table(rows: pd.DataFrame, drop: Iterable[str] = ()) -> pd.DataFrame:
    """Rows without provenance columns and without ``drop`` ids, indexed by ``particle_id``."""
    drop = set(drop)
    kept = rows[~rows[PARTICLE_ID].isin(drop)] if drop else rows
    return kept.drop(columns=[_FILE, _LINE]).set_index(PARTICLE_ID)


def required_columns(part: ResolvedPart) -> tuple[str, ...]:
    """Columns every CSV of the part must have after mapping (a per-file label counts as present)."""
    needed = [IMGPATH]
    if part.part in ("train", "truth"):
        needed.append(LABEL)
    if part.part in PARTS_WITH_IMAGES:
        needed.extend(FLOWCAM_FEATURES)
    return tuple(needed)


def _read_rows(
    part: ResolvedPart, classes: Iterable[str] | None
) -> tuple[pd.DataFrame, list[Problem], set[str]]:
    """All CSV rows with provenance, the problems found in them, and the ids to drop."""
    frames, problems, bad, complete = [], [], set(), []
    for csv in part.csvs:
        frame, found, dropped = _read_csv(csv, part)
        problems += found
        bad |= dropped
        if frame is not None:
            frames.append(frame)
            complete.append(np.full(len(frame), not any(p.kind == "missing_column" for p in found)))
    rows = pd.concat(frames, ignore_index=True) if frames else _empty_rows(part)
    numbers = [c for c in NUMBER_COLUMNS if c in rows.columns]
    rows[numbers] = rows[numbers].astype(float)
    # Rows of a CSV that lacks a required column are all dropped; checking their values would only add noise.
    complete = np.concatenate(complete) if complete else np.zeros(0, dtype=bool)
    bad |= set(rows.loc[~complete, PARTICLE_ID].dropna())
    checks = (_id_problems(rows), _label_problems(rows[complete], part, classes))
    for found, ids in checks:
        problems += found
        bad |= ids
    rows = rows[rows[PARTICLE_ID].notna()].reset_index(drop=True)
    return rows, problems, bad


def _empty_rows(part: ResolvedPart) -> pd.DataFrame:
    """A rows frame with no rows and the part's columns."""
    return pd.DataFrame(columns=[PARTICLE_ID, _FILE, _LINE, *required_columns(part)[1:]])


def _read_csv(csv: CsvFile, part: ResolvedPart) -> tuple[pd.DataFrame | None, list[Problem], set[str]]:
    """One CSV as rows (mapped columns, per-file label, normalised ids, session, float numbers), problems, bad ids.

    Only empty cells count as missing: 'NA' or 'n/a' stay as written, so ids and labels are literal
    and a bad number is reported as it appears in the file.
    """
    theirs = {ours: their for their, ours in part.columns.items()}
    text = {theirs.get(c, c) for c in (IMGPATH, *TEXT_COLUMNS)} | {SOURCE_FILE, SOURCE_LINE}
    try:
        lab = read_lab_csv(csv.path, text_columns=text)
    except LabCsvError as exc:
        return None, [Problem("unreadable_csv", csv.name, line=exc.line, detail=exc.why)], set()
    problems = [] if lab.dialect.plain else [Problem("csv_dialect", csv.name, severity=WARNING,
                                                     detail=f"read as {lab.describe()}")]
    frame = lab.frame.rename(columns=dict(part.columns))
    used = {*TABLE_COLUMNS, SOURCE_FILE, SOURCE_LINE}
    doubled = sorted(set(frame.columns[frame.columns.duplicated()]) & used)
    if doubled:
        return None, [*problems, Problem("unreadable_csv", csv.name,
                                         detail=f"column(s) {doubled} appear more than once (after mapping)")], set()
    if csv.label is not None:
        frame[LABEL] = csv.label
    missing = [c for c in required_columns(part) if c not in frame.columns]
    problems += [Problem("missing_column", csv.name, column=c, detail=_missing_detail(c, part)) for c in missing]
    if IMGPATH in missing:
        return None, problems, set()
    frame[_FILE], frame[_LINE], place_problems = _places(frame, csv.name, lab.lines)
    ids, id_problems = _normalise_ids(frame, part)
    frame[PARTICLE_ID] = ids
    number_problems, bad = _number_problems(frame, part, check=not missing)
    if part.session_pattern and SESSION not in frame.columns:
        basename = ids.str.rsplit("/", n=1).str[-1]
        frame[SESSION] = basename.str.extract(part.session_pattern, expand=False)
    keep = [c for c in (PARTICLE_ID, _FILE, _LINE, LABEL, SESSION, SAMPLE, DEPTH, VOLUME, *FLOWCAM_FEATURES)
            if c in frame]
    return frame[keep], problems + place_problems + id_problems + number_problems, bad


def _places(frame: pd.DataFrame, name: str, lines: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Each row's file and line: its own in the CSV, or the lab's from ``source_file`` and ``source_line``.

    A row with a file but no line (crops without one, features computed from images) is named by the file
    alone (line None); a line without a file, or one that is not a positive whole number, keeps the row's own
    place and gets a warning.
    """
    files = np.full(len(frame), name, dtype=object)
    if SOURCE_FILE not in frame and SOURCE_LINE not in frame:
        return files, lines, []
    nothing = pd.Series(np.nan, index=frame.index, dtype=object)
    given_file, given_line = frame.get(SOURCE_FILE, nothing), frame.get(SOURCE_LINE, nothing)
    has_file, has_line = given_file.notna().to_numpy(), given_line.notna().to_numpy()
    number = pd.to_numeric(given_line, errors="coerce").to_numpy(dtype=float)
    good_line, file_only = (number >= 1) & (number % 1 == 0), has_file & ~has_line
    use = has_file & good_line | file_only
    files[use] = given_file.to_numpy()[use]
    places = np.where(use, np.nan_to_num(number), lines).astype(np.int64).astype(object)
    places[file_only] = None
    odd = has_line & ~(has_file & good_line)
    problems = [
        Problem("bad_provenance", name, line=int(n), column=SOURCE_LINE, severity=WARNING,
                detail=f"{SOURCE_LINE} {_cell(g)} ({SOURCE_FILE} {_cell(f)}): a lab's line needs its file and "
                       f"must be a positive whole number; the row is named by its place in {name}")
        for n, f, g in zip(lines[odd], given_file[odd], given_line[odd])
    ]
    return files, places, problems


def _number_problems(frame: pd.DataFrame, part: ResolvedPart, check: bool) -> tuple[list[Problem], set[str]]:
    """Number columns made floats in place; with ``check``, values that are not finite numbers become problems.

    Features (in parts with images) must be finite; depth and volume may be empty, but a written one must be a
    finite number. Each problem quotes the value as written in the file.
    """
    columns = [c for c in NUMBER_COLUMNS if c in frame.columns]
    raw = frame[columns]
    frame[columns] = pd.DataFrame({c: lab_number(raw[c]) for c in columns}, index=raw.index)
    if not check or not columns:
        return [], set()
    features = part.part in PARTS_WITH_IMAGES
    required = np.array([c in FLOWCAM_FEATURES and features for c in columns])
    checked = required | np.isin(columns, (DEPTH, VOLUME))
    bad = ~np.isfinite(frame[columns].to_numpy(dtype=float)) & checked & (raw.notna().to_numpy() | required)
    r_idx, c_idx = np.nonzero(bad)
    pids, files, lines = (frame[c].tolist() for c in (PARTICLE_ID, _FILE, _LINE))
    problems = [
        Problem("non_finite", files[r], line=lines[r], column=columns[c], particle_id=pids[r],
                detail=_not_finite(raw.iat[r, c]))
        for r, c in zip(r_idx, c_idx)
    ]
    return problems, {pids[r] for r in np.unique(r_idx) if isinstance(pids[r], str)}


def _missing_detail(column: str, part: ResolvedPart) -> str:
    """Why a column is needed, and how to map it."""
    mapped = [their for their, ours in part.columns.items() if ours == column]
    how = f"(mapped from {mapped[0]!r})" if mapped else "(map the lab's name to it under `columns:` in the manifest)"
    return f"required column {column!r} is missing {how}"


def _normalise_ids(frame: pd.DataFrame, part: ResolvedPart) -> tuple[pd.Series, list[Problem]]:
    """Particle ids from imgpaths: prefix removed, '/' separators; unsafe or empty paths become problems."""
    raw = frame[IMGPATH]
    prefix = part.imgpath_prefix
    stripped = raw.map(lambda s: s[len(prefix):] if prefix and isinstance(s, str) and s.startswith(prefix) else s)
    ids: list[str | None] = []
    problems = []
    for file, line, text in zip(frame[_FILE], frame[_LINE], stripped):
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem("missing_imgpath", file, line=line, column=IMGPATH, detail="empty imgpaths"))
            ids.append(None)
            continue
        try:
            ids.append(normalize_name(text.strip(), file))
        except UnsafeSourceError:
            problems.append(Problem("unsafe_path", file, line=line, column=IMGPATH, particle_id=text,
                                    detail="imgpath points outside the image source; refused"))
            ids.append(None)
    return pd.Series(ids, index=frame.index, dtype="str"), problems


def _id_problems(rows: pd.DataFrame) -> tuple[list[Problem], set[str]]:
    """Every row of an id that appears more than once, naming the other places."""
    dup = rows[rows[PARTICLE_ID].notna() & rows[PARTICLE_ID].duplicated(keep=False)]
    where = dict(zip(dup.index, (_place(f, n) for f, n in zip(dup[_FILE], dup[_LINE]))))
    groups = dup.groupby(PARTICLE_ID).groups
    problems = [
        Problem("duplicate_id", f, line=n, column=IMGPATH, particle_id=pid,
                detail=f"same imgpath as {', '.join(where[j] for j in groups[pid] if j != i)}")
        for i, pid, f, n in zip(dup.index, dup[PARTICLE_ID], dup[_FILE], dup[_LINE])
    ]
    return problems, set(dup[PARTICLE_ID])


def _label_problems(
    rows: pd.DataFrame, part: ResolvedPart, classes: Iterable[str] | None
) -> tuple[list[Problem], set[str]]:
    """Missing labels (train, truth) and labels that are not a known class (train)."""
    if LABEL not in rows.columns or part.part not in ("train", "truth"):
        return [], set()
    known = tuple(part.classes if classes is None else classes)
    missing = rows[LABEL].isna()
    unknown = ~missing & ~rows[LABEL].isin(known) if part.part == "train" else pd.Series(False, index=rows.index)
    problems = [Problem("missing_label", f, line=n, column=LABEL, particle_id=pid, detail="no label")
                for pid, f, n in zip(*_where(rows[missing]))]
    problems += [Problem("unknown_label", f, line=n, column=LABEL, particle_id=pid,
                         detail=f"label {value!r} is not one of the classes {', '.join(known)}")
                 for (pid, f, n), value in zip(zip(*_where(rows[unknown])), rows.loc[unknown, LABEL])]
    return problems, set(rows.loc[missing | unknown, PARTICLE_ID].dropna())


def _place(file: str, line: int | None) -> str:
    """'file line n', or the file alone where the place has no line."""
    return file if line is None else f"{file} line {line}"


def _cell(value: object) -> str:
    """A cell as read, for a message: quoted, or 'empty'."""
    return "empty" if pd.isna(value) else repr(value)


def _not_finite(value: object) -> str:
    """What is wrong with a feature value as read from the CSV."""
    if isinstance(value, str):
        return f"value {value!r} is not a finite number"
    return "empty cell" if pd.isna(value) else f"value {value} is not a finite number"


def _where(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Particle id, file and line of some rows."""
    return rows[PARTICLE_ID], rows[_FILE], rows[_LINE]


def _image_problems(rows: pd.DataFrame, listing: tuple[str, ...], images: str) -> tuple[list[Problem], set[str]]:
    """Rows without an image (errors) and images without a row (warnings)."""
    available = set(listing)
    missing = ~rows[PARTICLE_ID].isin(available)
    problems = [
        Problem("missing_image", f, line=n, column=IMGPATH, particle_id=pid, detail=f"no such image in {images}")
        for pid, f, n in zip(*_where(rows[missing]))
    ]
    orphans = sorted(available - set(rows[PARTICLE_ID]))
    problems += [
        Problem("orphan_image", images, particle_id=name, detail="image has no row in any CSV", severity=WARNING)
        for name in orphans
    ]
    return problems, set(rows.loc[missing, PARTICLE_ID])
