"""Crop bytes -> 8-bit gray arrays: every PNG/TIFF/JPEG mode decoded, resized, and decoded in parallel with a resumable journal.

Workers read zip members at offsets the parent located (a million-member central directory is parsed once,
not once per worker); each finished chunk is journalled, so an interrupted pack resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..schema import BACKGROUND_GRAY
from .sources import DecodeError, ImageSource, UnsafeSourceError

# Image.open may only pick these decoders: a file named .png must not reach an exotic (EPS, ...) parser.
DECODE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")


# Images per parallel decoding task (and per journal record of a resumable pack).
DECODE_CHUNK = 512


def decode_gray(data: bytes, name: str, size: int | None = None) -> np.ndarray:
    """A 2-D uint8 gray image from PNG (any mode) / JPEG / TIFF / BMP bytes, optionally resized to size x size.

    L, P (palette), RGB, 1 and CMYK become ITU-R 601 luma; images with alpha (RGBA, LA, PA, P with
    transparency) are composited onto ``BACKGROUND_GRAY``; 16-bit gray (I;16*) and 32-bit I are scaled
    by 1/257 (65535 -> 255), so brightness stays comparable across bit depths; F is clipped to 0..255.
    The resize stretches the crop to a square with Pillow's anti-aliased bilinear filter, as the
    reference study stretches to 128x128: a crop's size and aspect ratio live in its features.
    """
    gray, _ = _open_gray(data, name)
    return np.asarray(gray if size is None else _resize(gray, size), dtype=np.uint8)


def _open_gray(data: bytes, name: str) -> tuple[Image.Image, bool]:
    """Image bytes fully decoded into an 8-bit 'L' image, and whether it held colour; failures name the file."""
    try:
        img = Image.open(io.BytesIO(data), formats=DECODE_FORMATS)
        img.load()
        return _to_gray(img), _in_colour(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(name, f"{type(exc).__name__}: {exc}") from exc


def _in_colour(img: Image.Image) -> bool:
    """Whether an image holds colour: a pixel whose red, green and blue differ (palette, CMYK, alpha modes too)."""
    if img.mode in ("1", "L", "LA", "La", "F") or img.mode.startswith("I"):
        return False
    rgb = np.asarray(img.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def _resize(gray: Image.Image, size: int) -> Image.Image:
    """Stretch to size x size with Pillow's bilinear filter (anti-aliased when shrinking)."""
    return gray.resize((size, size), Image.Resampling.BILINEAR)


def _to_gray(img: Image.Image) -> Image.Image:
    """An 8-bit 'L' image from any Pillow mode (see :func:`decode_gray` for the rules)."""
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        return _composite_on_background(img)
    if mode.startswith("I"):
        wide = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.round(np.clip(wide, 0, 65535) / 257).astype(np.uint8))
    if mode == "F":
        return Image.fromarray(np.round(np.clip(np.asarray(img), 0, 255)).astype(np.uint8))
    if mode in ("1", "P", "RGB"):
        return img.convert("L")
    return img.convert("RGB").convert("L")


def _composite_on_background(img: Image.Image) -> Image.Image:
    """Luma of an image with alpha, composited onto the instrument's background gray."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (BACKGROUND_GRAY, BACKGROUND_GRAY, BACKGROUND_GRAY, 255))
    return Image.alpha_composite(background, rgba).convert("L")


@dataclass(frozen=True)
class DecodeResult:
    """What a decoding pass found: the original (height, width) of every image, which were colour, the failures."""

    shapes: np.ndarray  # (N, 2) int32; (0, 0) where decoding failed
    colour: np.ndarray  # (N,) bool; True where a colour crop was made gray (ITU-R 601 luma)
    errors: dict[str, str]  # name -> reason


def default_workers(workers: int) -> int:
    """The number of processes to use: ``workers``, or every core available to this process when 0."""
    if workers > 0:
        return workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_many(
    source: ImageSource,
    names: Sequence[str],
    *,
    out: Path | None = None,
    workers: int = 0,
    chunk_size: int = DECODE_CHUNK,
    journal: Path | None = None,
    progress: bool = True,
) -> DecodeResult:
    """Decode ``names`` in parallel over chunks (each worker process opens the source itself).

    With ``out`` (an existing ``.npy`` of shape (N, S, S) uint8) each image is resized to S x S and
    written to its row; rows of images that fail stay zero. Without it, decoding is only a check.
    With ``journal`` (a folder), every finished chunk is recorded there once its rows are flushed; a later
    call with the same names, ``out``, ``chunk_size`` and journal decodes only the chunks not yet recorded,
    so an interrupted pack of millions of crops resumes where it stopped.
    """
    chunks = [(start, list(names[start:start + chunk_size])) for start in range(0, len(names), chunk_size)]
    shapes = np.zeros((len(names), 2), dtype=np.int32)
    colour = np.zeros(len(names), dtype=bool)
    errors: dict[str, str] = {}
    recorded = _read_journal(journal) if journal is not None else {}
    done = {start for start, part in chunks if start in recorded and len(recorded[start][0]) == len(part)}
    for start in done:
        chunk_shapes, chunk_colour, chunk_errors = recorded[start]
        shapes[start:start + len(chunk_shapes)] = chunk_shapes
        colour[start:start + len(chunk_colour)] = chunk_colour
        errors.update(chunk_errors)
    todo = [chunk for chunk in chunks if chunk[0] not in done]
    n_procs = min(default_workers(workers), max(len(todo), 1))
    bar = tqdm(total=len(names), initial=len(names) - sum(len(c[1]) for c in todo), desc=f"decode {source.path.name}",
               unit="img", disable=not progress)
    tasks = ((start, part, source.locate(part)) for start, part in todo)
    with bar, _chunk_runner(source, out, n_procs) as run:
        for start, chunk_shapes, chunk_colour, chunk_errors in run(tasks):
            shapes[start:start + len(chunk_shapes)] = chunk_shapes
            colour[start:start + len(chunk_colour)] = chunk_colour
            errors.update(chunk_errors)
            if journal is not None:
                _record_chunk(journal, start, chunk_shapes, chunk_colour, chunk_errors)
            bar.update(len(chunk_shapes))
    return DecodeResult(shapes=shapes, colour=colour, errors=errors)


def _record_chunk(journal: Path, start: int, shapes: np.ndarray, colour: np.ndarray, errors: dict[str, str]) -> None:
    """Write one finished chunk's shapes, colour flags and failures to the journal (atomically: whole or absent)."""
    journal.mkdir(parents=True, exist_ok=True)
    tmp = journal / f".{start:012d}.json.tmp"
    tmp.write_text(json.dumps({"start": start, "shapes": shapes.tolist(), "colour": colour.tolist(), "errors": errors}))
    os.replace(tmp, journal / f"{start:012d}.json")


def _read_journal(journal: Path) -> dict[int, tuple[np.ndarray, np.ndarray, dict[str, str]]]:
    """The chunks a journal records as finished: start -> (shapes, colour flags, errors)."""
    records = {}
    for path in sorted(journal.glob("*.json")) if journal.is_dir() else []:
        record = json.loads(path.read_text())
        shapes = np.asarray(record["shapes"], dtype=np.int32).reshape(-1, 2)
        records[int(record["start"])] = (shapes, np.asarray(record["colour"], dtype=bool), record["errors"])
    return records


_ChunkTask = tuple[int, list[str], list[Any]]


_ChunkResult = tuple[int, np.ndarray, np.ndarray, dict[str, str]]


_WORKER: dict[str, Any] = {}


# What reading one image can raise besides DecodeError: a missing or oversized member, a corrupt zip stream.
_READ_ERRORS = (DecodeError, UnsafeSourceError, OSError, zipfile.BadZipFile, zlib.error, EOFError)


@contextlib.contextmanager
def _chunk_runner(
    source: ImageSource, out: Path | None, n_procs: int
) -> Iterator[Callable[[Iterable[_ChunkTask]], Iterable[_ChunkResult]]]:
    """A function mapping chunks to results: in this process, or over a pool of spawned workers."""
    if n_procs <= 1:
        _init_worker(source, out)
        try:
            yield lambda chunks: map(_decode_chunk, chunks)
        finally:
            _WORKER.clear()
        return
    # spawn, not fork: forking a process that already runs torch/OpenMP threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n_procs, initializer=_init_worker, initargs=(source, out)) as pool:
        yield lambda chunks: pool.imap_unordered(_decode_chunk, chunks)


def _init_worker(source: ImageSource, out: Path | None) -> None:
    """Keep the source and the memory-mapped output array open for the life of the process."""
    _WORKER["source"] = source
    _WORKER["out"] = None if out is None else np.load(out, mmap_mode="r+")


def _decode_chunk(task: _ChunkTask) -> _ChunkResult:
    """Decode one chunk of located images into its output rows; returns the original shapes, colour flags, failures."""
    start, names, handles = task
    source, out = _WORKER["source"], _WORKER["out"]
    shapes = np.zeros((len(names), 2), dtype=np.int32)
    colour = np.zeros(len(names), dtype=bool)
    errors: dict[str, str] = {}
    for i, (name, handle) in enumerate(zip(names, handles)):
        try:
            gray, colour[i] = _open_gray(source.read_located(handle), name)
        except _READ_ERRORS as exc:
            errors[name] = str(exc)
            continue
        shapes[i] = gray.height, gray.width
        if out is not None:
            out[start + i] = np.asarray(_resize(gray, out.shape[1]), dtype=np.uint8)
    if out is not None:
        out.flush()
    return start, shapes, colour, errors
