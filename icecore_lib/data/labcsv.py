"""CSVs as labs write them: encoding, separator, decimal comma, preamble and summary lines found and reported.

:func:`read_lab_csv` reads a CSV from an instrument (VisualSpreadsheet) or a spreadsheet program into text
cells, with the line number of every row as a text editor shows it, and says in its :class:`CsvDialect` how
the file was read. Anything it cannot read is a :class:`LabCsvError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# Optional provenance columns: an importer that writes a canonical CSV from a lab's own files puts the lab's
# file and line here, and problems with a row then name that place.
SOURCE_FILE = "source_file"
SOURCE_LINE = "source_line"
SEPARATORS = (",", ";", "\t")
# The header is looked for among this many records at the top of a file.
HEADER_SCAN = 50
# Whether a column holds numbers, and with which decimal mark, is judged on this many of its filled cells.
SAMPLE_CELLS = 1000
_NUMBER = re.compile(r"\s*[+-]?(\d+([.,]\d*)?|[.,]\d+)([eE][+-]?\d+)?\s*")
_COMMA_NUMBER = r"\s*[+-]?(\d+,\d*|,\d+)([eE][+-]?\d+)?\s*"
_ENCODING_NAMES = {"utf-8-sig": "utf-8 with BOM"}
_SEPARATOR_NAMES = {",": "','", ";": "';'", "\t": "tab"}


class LabCsvError(ValueError):
    """A CSV that cannot be read; the message names the file and the line (``line`` None: the whole file)."""

    def __init__(self, path: Path, line: int | None, why: str) -> None:
        super().__init__(f"{path}{'' if line is None else f' line {line}'}: {why}")
        self.path, self.line, self.why = path, line, why


@dataclass(frozen=True)
class SkippedLine:
    """A line that is not part of the table: ``why`` is 'preamble', 'blank' or 'summary'."""

    line: int
    why: str


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV was read: its encoding, separator, decimal mark, header line and the lines skipped."""

    encoding: str  # Python codec: utf-8, utf-8-sig (BOM), utf-16, cp1252 or latin-1
    separator: str
    decimal: str
    header_line: int
    skipped: tuple[SkippedLine, ...] = ()

    @property
    def plain(self) -> bool:
        """True for UTF-8 (with or without BOM), ',' separated, decimal point, no line skipped but blank ones."""
        return (self.encoding in ("utf-8", "utf-8-sig") and self.separator == "," and self.decimal == "."
                and all(s.why == "blank" for s in self.skipped))

    def describe(self) -> str:
        """One line, e.g. "cp1252, ';' separated, decimal comma, 2 summary lines skipped (1004-1005)"."""
        parts = [_ENCODING_NAMES.get(self.encoding, self.encoding), f"{_SEPARATOR_NAMES[self.separator]} separated",
                 "decimal comma" if self.decimal == "," else "decimal point"]
        if self.header_line != 1:
            parts.append(f"header on line {self.header_line}")
        for why in dict.fromkeys(s.why for s in self.skipped):
            lines = [s.line for s in self.skipped if s.why == why]
            parts.append(f"{len(lines)} {why} line{'s' if len(lines) > 1 else ''} skipped ({_spans(lines)})")
        return ", ".join(parts)


@dataclass(frozen=True)
class LabCsv:
    """A lab's CSV: text cells (empty = NaN), each row's line in the file, and how the file was read."""

    frame: pd.DataFrame
    lines: np.ndarray  # int64, 1-based line of each row (the header is its own line)
    dialect: CsvDialect

    def describe(self) -> str:
        """The dialect in one line."""
        return self.dialect.describe()


def read_lab_csv(path: Path | str, text_columns: Iterable[str] = ()) -> LabCsv:
    """A lab's CSV as text cells, number columns with decimal points, and the line of every row.

    Encoding: UTF-8 (BOM or not; UTF-16 with a BOM), else cp1252, else latin-1. Separator and header: among
    the first ``HEADER_SCAN`` records, each line without a number in it is a header candidate; the separator
    and candidate that make the most cells win (fields x itself and the later records of its width; one column
    only where no separator gives more; the earliest on a tie). Data rows have numbers, so one wider than the
    header (a stray trailing separator, a decimal-comma row split at ',') is never taken for it. Lines before
    the header, blank lines and narrower lines after the last row are skipped and reported; a row wider than
    the header, or a narrower one among the rows, is an error.
    Decimal commas (never in ',' files) become points in the columns whose cells are mostly numbers, unless
    the column is in ``text_columns`` or a number there has a decimal point; other cells stay as written.
    """
    path = Path(path)
    text, encoding = _decode(path)
    separator, header_index = _sniff(text, path)
    header, rows, lines, header_line, skipped = _records(text, separator, header_index, path)
    frame, decimal = _frame(header, rows, separator, set(text_columns))
    dialect = CsvDialect(encoding, separator, decimal, header_line, tuple(sorted(skipped, key=lambda s: s.line)))
    return LabCsv(frame=frame, lines=np.asarray(lines, dtype=np.int64), dialect=dialect)


def lab_columns(path: Path | str) -> list[str]:
    """The column names of a lab's CSV, by the rules of :func:`read_lab_csv`, without parsing its rows."""
    path = Path(path)
    text, _ = _decode(path)
    separator, header_index = _sniff(text, path)
    return next(itertools.islice(_reader(_top(text), separator), header_index, None))


def lab_number(series: pd.Series, decimal: str = ".") -> pd.Series:
    """Floats from text cells, NaN where a cell is not a number; ``decimal=','`` also reads '1,25' as 1.25."""
    if decimal == "," and series.dtype == object:
        series = _decimal_point(series)
    return pd.to_numeric(series, errors="coerce").astype(float)


def _decode(path: Path) -> tuple[str, str]:
    """The file's text and its encoding; a NUL character (binary, or UTF-16 without BOM) is an error."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text, encoding = _decode_strict(data, "utf-16", path), "utf-16"
    elif data.startswith(b"\xef\xbb\xbf"):
        text, encoding = _decode_strict(data, "utf-8-sig", path), "utf-8-sig"
    else:
        text, encoding = _decode_8bit(data)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise LabCsvError(path, line, "NUL character; not a text CSV (binary, or UTF-16 without BOM?)")
    return text, encoding


def _decode_strict(data: bytes, encoding: str, path: Path) -> str:
    """Text of a file whose BOM names its encoding; a byte sequence that is not in it is an error naming its line."""
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[:exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise LabCsvError(path, line, f"starts with a {encoding} BOM but is not {encoding} ({exc.reason})") from exc


def _decode_8bit(data: bytes) -> tuple[str, str]:
    """UTF-8 when it is, else cp1252 (Windows spreadsheets), else latin-1 (which decodes every byte)."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return data.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


def _reader(text: str, separator: str, strict: bool = False) -> Any:
    """A csv reader over text (quotes as in RFC 4180; ``line_num`` counts the file's lines)."""
    return csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=strict)


def _sniff(text: str, path: Path) -> tuple[str, int]:
    """The separator and the header's record index (the rule is in :func:`read_lab_csv`)."""
    best, choice, top = (False, 0), None, _top(text)
    for separator in SEPARATORS:
        try:
            head = list(itertools.islice(_reader(top, separator), HEADER_SCAN))
        except csv.Error:
            continue
        widths = [len(record) for record in head]
        for index in (i for i, record in enumerate(head) if _header_like(record)):
            width = widths[index]
            score = (width > 1, width * widths[index:].count(width))
            if score > best:
                best, choice = score, (separator, index)
    if choice is None:
        raise LabCsvError(path, None, f"no header (a line of column names) in its first {HEADER_SCAN} lines")
    return choice


def _top(text: str) -> str:
    """The text up to its ``2 * HEADER_SCAN``-th newline (room for the scanned records, quoted newlines and all)."""
    end = 0
    for _ in range(2 * HEADER_SCAN):
        end = text.find("\n", end) + 1
        if end == 0:
            return text
    return text[:end]


def _header_like(record: list[str]) -> bool:
    """Whether a record could be a header: some text, and no cell that is a number."""
    return any(cell.strip() for cell in record) and not any(_NUMBER.fullmatch(cell) for cell in record)


def _records(
    text: str, separator: str, header_index: int, path: Path
) -> tuple[list[str], list[list[str]], list[int], int, list[SkippedLine]]:
    """Header, data rows, their lines, the header's line and the skipped lines (a malformed row raises)."""
    reader = _reader(text, separator, strict=True)
    header, rows, lines, skipped, narrow = [], [], [], [], []
    header_line, start = 0, 1
    try:
        for index, record in enumerate(reader):
            if index < header_index:
                skipped.append(SkippedLine(start, "blank" if not any(record) else "preamble"))
            elif index == header_index:
                header, header_line = record, start
            elif not any(record):
                skipped.append(SkippedLine(start, "blank"))
            elif len(record) < len(header):
                narrow.append((start, len(record)))
            elif len(record) > len(header) or narrow:
                line, width = (start, len(record)) if len(record) > len(header) else narrow[0]
                raise LabCsvError(path, line, f"{width} field{'s' * (width != 1)}, but the header (line {header_line}) "
                                              f"has {len(header)}")
            else:
                rows.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise LabCsvError(path, start, str(exc)) from exc
    skipped += [SkippedLine(line, "summary") for line, _ in narrow]
    return header, rows, lines, header_line, skipped


def _frame(
    header: list[str], rows: list[list[str]], separator: str, text_columns: set[str]
) -> tuple[pd.DataFrame, str]:
    """The rows as text cells (empty = NaN) and the decimal mark, decimal commas made points (see read_lab_csv)."""
    cells = zip(*rows) if rows else [()] * len(header)
    columns = [_text_column(column) for column in cells]
    numbers = [] if separator == "," else [
        i for i, name in enumerate(header) if name not in text_columns and _mostly_numbers(columns[i])
    ]
    decimal = "," if _decimal_comma([columns[i] for i in numbers]) else "."
    if decimal == ",":
        for i in numbers:
            columns[i] = _decimal_point(columns[i])
    frame = pd.DataFrame(dict(enumerate(columns)), index=pd.RangeIndex(len(rows)))
    frame.columns = list(header)
    return frame, decimal


def _text_column(cells: tuple[str, ...]) -> pd.Series:
    """One column's cells as an object Series, empty cells NaN."""
    values = np.array(cells, dtype=object)
    values[values == ""] = np.nan
    return pd.Series(values, dtype=object)


def _sample(column: pd.Series) -> pd.Series:
    """The first ``SAMPLE_CELLS`` non-empty cells of a column, on which its kind is judged."""
    return column.dropna().head(SAMPLE_CELLS)


def _mostly_numbers(column: pd.Series) -> bool:
    """Whether at least half the sampled non-empty cells are numbers (decimal point or comma)."""
    filled = _sample(column)
    n_numbers = pd.to_numeric(filled, errors="coerce").notna().sum() + _comma_cells(filled).sum()
    return len(filled) > 0 and 2 * n_numbers >= len(filled)


def _decimal_comma(columns: list[pd.Series]) -> bool:
    """Whether number columns write decimals with a comma: some '1,25' and no '1.25' in their samples."""
    samples = [_sample(c) for c in columns]
    commas = any(_comma_cells(s).any() for s in samples)
    points = any((pd.to_numeric(s, errors="coerce").notna() & s.str.contains(".", regex=False)).any()
                 for s in samples)
    return commas and not points


def _comma_cells(column: pd.Series) -> pd.Series:
    """Which cells of a column without empty cells are numbers written with a decimal comma."""
    return column.str.fullmatch(_COMMA_NUMBER).astype(bool)


def _decimal_point(column: pd.Series) -> pd.Series:
    """The column with decimal-comma numbers written with a point; other cells as they were."""
    pointed = column.str.replace(",", ".", regex=False)
    return column.where(pd.to_numeric(pointed, errors="coerce").isna(), pointed)


def _spans(lines: list[int]) -> str:
    """Line numbers as ranges: '1-3, 7' (the first 4 ranges, then '...')."""
    spans: list[list[int]] = []
    for line in lines:
        if spans and line == spans[-1][1] + 1:
            spans[-1][1] = line
        else:
            spans.append([line, line])
    text = [f"{a}-{b}" if b > a else str(a) for a, b in spans[:4]]
    return ", ".join(text) + (", ..." if len(spans) > 4 else "")
