"""Image sources: hostile archives and folders are refused, extraction is capped, every PNG mode decodes."""

from __future__ import annotations

import os
import pickle
import stat
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import crop, png_bytes
from PIL import Image

from icecore_lib.images.decode import decode_gray, decode_many
from icecore_lib.images.sources import (
    DecodeError,
    FolderSource,
    UnsafeSourceError,
    ZipSource,
    normalize_name,
    safe_extract,
)
from icecore_lib.schema import BACKGROUND_GRAY

HOSTILE_NAMES = ["../evil.png", "/tmp/evil.png", "C:/evil.png", "ok/..\\..\\evil.png", "..\\evil.png"]


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    """A zip with the given members written verbatim (names are not sanitised), plus symlink members."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tree(root: Path) -> set[str]:
    """Every path under a folder, relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_member_names_are_refused_and_nothing_is_written(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "in.zip", {"fine.png": b"x", name: b"evil"})
    with pytest.raises(UnsafeSourceError, match="unsafe name"):
        safe_extract(archive, tmp_path / "out" / "target")
    with pytest.raises(UnsafeSourceError):
        ZipSource(archive)
    assert _tree(tmp_path) == {"in.zip"}
    assert not Path("/tmp/evil.png").exists() or Path("/tmp/evil.png").read_bytes() != b"evil"


def test_symlink_members_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "in.zip", {"a.png": b"x"}, symlinks={"link.png": "/etc/passwd"})
    with pytest.raises(UnsafeSourceError, match="symbolic-link member 'link.png'"):
        safe_extract(archive, tmp_path / "target")
    assert _tree(tmp_path) == {"in.zip"}


def test_extraction_is_capped_against_zip_bombs(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", bytes(2_000_000))
    assert archive.stat().st_size < 20_000
    with pytest.raises(UnsafeSourceError, match="over the cap"):
        safe_extract(archive, tmp_path / "target", max_total_bytes=1_000_000)
    assert _tree(tmp_path) == {"bomb.zip"}
    with pytest.raises(UnsafeSourceError, match="zeros.png"):
        ZipSource(archive, max_member_bytes=1_000_000).read("zeros.png")


def test_safe_extract_writes_every_member_and_refuses_a_full_target(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "in.zip", {"a/b.png": b"one", "c.png": b"two"})
    written = safe_extract(archive, tmp_path / "target")
    assert sorted(p.read_bytes() for p in written) == [b"one", b"two"]
    assert _tree(tmp_path / "target") == {"a", "a/b.png", "c.png"}
    with pytest.raises(FileExistsError, match="not empty"):
        safe_extract(archive, tmp_path / "target")


def test_names_are_normalised_and_read_in_place(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "in.zip", {"./a\\b.png": b"one", "notes.txt": b"-"})
    source = ZipSource(archive)
    assert source.names() == ["a/b.png"]
    assert source.read("a/b.png") == b"one"
    assert normalize_name("x//y/./z.png") == "x/y/z.png"
    assert _tree(tmp_path) == {"in.zip"}


def test_folder_symlinks_pointing_outside_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "inside.png").write_bytes(b"inside")
    os.symlink(folder / "inside.png", folder / "alias.png")
    source = FolderSource(folder)
    assert source.read("alias.png") == b"inside"
    os.symlink(outside, folder / "leak.png")
    with pytest.raises(UnsafeSourceError, match="points outside"):
        source.names()
    with pytest.raises(UnsafeSourceError, match="points outside"):
        source.read("leak.png")
    with pytest.raises(UnsafeSourceError, match="unsafe name"):
        source.read("../secret.png")


GRAY = np.tile(np.linspace(20, 230, 24).round().astype(np.uint8), (10, 1))


def _as_mode(mode: str) -> Image.Image:
    """GRAY in a Pillow mode (RGBA/LA fully opaque)."""
    if mode == "I;16":
        return Image.fromarray(GRAY.astype(np.uint16) * 257)
    if mode == "P":
        return Image.fromarray(GRAY).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    return Image.fromarray(GRAY).convert(mode)


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA", "LA", "I;16"])
def test_every_mode_decodes_to_the_same_uint8_gray(mode: str) -> None:
    image = _as_mode(mode)
    assert image.mode == mode
    gray = decode_gray(png_bytes(image), f"x_{mode}.png")
    assert gray.dtype == np.uint8 and gray.shape == GRAY.shape
    assert np.abs(gray.astype(int) - GRAY).max() <= 2


def test_bilevel_images_decode_to_black_and_white() -> None:
    gray = decode_gray(png_bytes(Image.fromarray(GRAY).convert("1")), "bits.png")
    assert gray.shape == GRAY.shape and set(np.unique(gray)) == {0, 255}


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparent_pixels_become_the_instrument_background(mode: str) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[2:6, 2:6] = (40, 40, 40, 255)
    gray = decode_gray(png_bytes(Image.fromarray(rgba).convert(mode)), "t.png")
    assert gray[0, 0] == BACKGROUND_GRAY and gray[3, 3] == 40


def test_sixteen_bit_full_range_maps_to_full_eight_bit() -> None:
    wide = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    assert decode_gray(png_bytes(wide), "w.png").tolist() == [[0, 100, 255]]


def test_resize_gives_a_square_of_the_requested_size() -> None:
    gray = decode_gray(png_bytes(crop(3)), "c.png", size=16)
    assert gray.shape == (16, 16) and gray.dtype == np.uint8
    assert gray[0, 0] == 110 and gray[8, 8] < 110


@pytest.mark.parametrize("data", [png_bytes(crop(1))[:60], b"\x89PNG\r\n\x1a\n" + bytes(range(200)), os.urandom(300)])
def test_broken_images_raise_an_error_naming_the_file(data: bytes) -> None:
    with pytest.raises(DecodeError, match="broken/crop_7.png"):
        decode_gray(data, "broken/crop_7.png")


def test_parallel_decoding_matches_serial_and_reports_failures(tmp_path: Path) -> None:
    members = {f"c{i}.png": png_bytes(crop(i)) for i in range(6)} | {"bad.png": b"not a png"}
    source = ZipSource(_zip(tmp_path / "in.zip", members))
    names = sorted(members)
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.npy"
        np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(names), 8, 8)).flush()
        result = decode_many(source, names, out=out, workers=workers, chunk_size=2, progress=False)
        assert list(result.errors) == ["bad.png"] and "bad.png" in result.errors["bad.png"]
        assert result.shapes[names.index("c2.png")].tolist() == list(crop(2).shape)
        outputs[workers] = np.load(out)
    np.testing.assert_array_equal(outputs[1], outputs[2])
    assert not outputs[1][names.index("bad.png")].any()


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_zip_members_read_in_place_match_zipfile_and_a_pickled_source_never_lists(
    tmp_path: Path, method: int
) -> None:
    members = {f"d/c{i}.png": png_bytes(crop(i)) for i in range(4)}
    archive = tmp_path / "in.zip"
    with zipfile.ZipFile(archive, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    source = ZipSource(archive)
    worker_copy = pickle.loads(pickle.dumps(source))
    located = source.locate([*members, "d/missing.png"])
    assert [worker_copy.read_located(m) for m in located[:-1]] == list(members.values())
    assert worker_copy._members is None  # the worker read by offset; it never parsed the central directory
    with pytest.raises(FileNotFoundError, match="d/missing.png"):
        worker_copy.read_located(located[-1])


def test_a_corrupted_member_is_refused_by_name(tmp_path: Path) -> None:
    data = png_bytes(crop(1))
    archive = _zip(tmp_path / "in.zip", {"ok.png": png_bytes(crop(0)), "flipped.png": data})
    raw = bytearray(archive.read_bytes())
    at = raw.index(data) + len(data) // 2
    raw[at] ^= 0xFF
    archive.write_bytes(bytes(raw))
    source = ZipSource(archive)
    assert source.read("ok.png") == png_bytes(crop(0))
    with pytest.raises(zipfile.BadZipFile, match="flipped.png.*CRC-32"):
        source.read("flipped.png")


def test_a_member_larger_than_its_central_directory_size_is_refused_without_inflating_it(tmp_path: Path) -> None:
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", b"\0" * 50_000_000)  # deflates to ~50 kB
    source = ZipSource(archive)
    (member,) = source.locate(["bomb.png"])
    liar = member._replace(size=100)  # what a hostile central directory would claim
    tracemalloc.start()
    with pytest.raises(zipfile.BadZipFile, match="bomb.png.*size or CRC-32"):
        source.read_located(liar)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5_000_000  # the 50 MB were never inflated
