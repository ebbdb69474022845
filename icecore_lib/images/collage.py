"""Crops cut out of FlowCam collage sheets: the instrument stores many particles per TIFF sheet, each at the
position (``Image X/Y``) and size (``Image Width/Height``) its particle CSV gives, with a binary mask sheet
(``<sheet>_bin.tif``) beside it. The crops are written, colour kept, into one uncompressed zip of PNGs.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .decode import DECODE_FORMATS


@dataclass(frozen=True)
class CropBox:
    """Where one particle's crop lies: its name in the crops zip, its sheet's path and box, and its CSV line."""

    name: str
    sheet: Path
    x: int
    y: int
    width: int
    height: int
    line: int


@dataclass(frozen=True)
class CutReport:
    """What cutting found: crops written, boxes that could not be cut (name -> why), boxes with an empty mask."""

    written: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)
    empty_mask: tuple[str, ...] = ()
    sheets: int = 0
    masks: int = 0


def mask_path(sheet: Path) -> Path:
    """The binary mask sheet the instrument writes beside a collage sheet: ``<stem>_bin.tif``."""
    return sheet.with_name(f"{sheet.stem}_bin{sheet.suffix}")


def _open_sheet(path: Path) -> np.ndarray:
    """A collage or mask sheet as an array (RGB and gray kept as stored)."""
    with Image.open(path, formats=DECODE_FORMATS) as img:
        img.load()
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB", "1") else img)


def _box_problem(box: CropBox, shape: tuple[int, ...]) -> str:
    """Why a box cannot be cut from a sheet of ``shape`` ('' when it can)."""
    if box.width < 1 or box.height < 1:
        return f"box {box.width}x{box.height} px is empty"
    if box.x < 0 or box.y < 0 or box.x + box.width > shape[1] or box.y + box.height > shape[0]:
        return (f"box x={box.x} y={box.y} {box.width}x{box.height} px lies outside the sheet "
                f"({shape[1]}x{shape[0]} px)")
    return ""


def _png(crop: np.ndarray) -> bytes:
    """A crop encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(crop).save(buffer, format="PNG")
    return buffer.getvalue()


def copy_members(source: Path, dest: Path, names: set[str]) -> None:
    """Write the ``names`` members of one uncompressed zip into a new one (atomically): a part's own crops."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                if info.filename in names:
                    zout.writestr(info, zin.read(info))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


def cut_crops(boxes: Sequence[CropBox], dest: Path, progress: bool = True) -> CutReport:
    """Cut every box out of its sheet into the zip ``dest`` (written atomically).

    A missing or unreadable sheet, or a box outside its sheet, fails that particle (reported, not written);
    where the mask sheet exists, a box whose mask holds no particle pixel is reported as ``empty_mask``.
    """
    written, failed, empty = [], {}, []
    ordered = sorted(boxes, key=lambda b: b.sheet)
    sheets = masks = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf, \
                tqdm(total=len(ordered), desc="cutting crops", unit="crop", disable=not progress) as bar:
            for sheet_file, group in groupby(ordered, key=lambda b: b.sheet):
                group = list(group)
                sheet_name = sheet_file.name
                try:
                    sheet = _open_sheet(sheet_file)
                except (OSError, ValueError, SyntaxError) as exc:
                    failed |= {b.name: f"collage sheet {sheet_name} cannot be read ({exc})" for b in group}
                    bar.update(len(group))
                    continue
                sheets += 1
                mask = _open_sheet(mask_path(sheet_file)) if mask_path(sheet_file).is_file() else None
                masks += mask is not None
                for box in group:
                    why = _box_problem(box, sheet.shape)
                    if why:
                        failed[box.name] = f"{sheet_name}: {why}"
                        continue
                    rows, cols = slice(box.y, box.y + box.height), slice(box.x, box.x + box.width)
                    if mask is not None and not mask[rows, cols].any():
                        empty.append(box.name)
                    zf.writestr(box.name, _png(np.ascontiguousarray(sheet[rows, cols])))
                    written.append(box.name)
                bar.update(len(group))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return CutReport(tuple(written), failed, tuple(empty), sheets, masks)
