"""Image sources (a zip read in place, or a folder) that refuse hostile names, and safe extraction.

Names inside a source are normalised to ``a/b/c.png`` (forward slashes, no ``./``); every name that could
reach outside the source (``..``, absolute paths, drive letters, backslash tricks, symlinks) is refused
with an :class:`UnsafeSourceError` naming it. Zip members are read in place, with their size and CRC checked
against the central directory and inflation capped; decoding lives in :mod:`icecore_lib.images.decode`.
"""

from __future__ import annotations

import abc
import bz2
import hashlib
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_MEMBER_BYTES = 64 * 2**20
MAX_EXTRACT_BYTES = 32 * 2**30
_DRIVE = re.compile(r"^[A-Za-z]:")
_COPY_BLOCK = 2**20


class UnsafeSourceError(ValueError):
    """A zip member or folder entry that could reach outside its root, or a zip bomb."""


class DecodeError(ValueError):
    """An image that cannot be decoded (truncated, corrupt, not an image), naming the file."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: cannot decode image ({reason})")
        self.name = name
        self.reason = reason


def normalize_name(name: str, where: str = "") -> str:
    """The name with '/' separators and no './' parts; refuses names that could leave their root."""
    clean = name.replace("\\", "/")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    unsafe = "\x00" in clean or clean.startswith("/") or _DRIVE.match(clean) or ".." in parts or not parts
    if unsafe:
        raise UnsafeSourceError(f"{where or 'source'}: refusing unsafe name {name!r}")
    return "/".join(parts)


def is_image_name(name: str) -> bool:
    """Whether a member name looks like an image file (macOS '__MACOSX' resource forks excluded)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("__MACOSX/")


def sha256_file(path: Path | str, block: int = _COPY_BLOCK) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    """Whether a zip member is a symbolic link (Unix mode in the high bits of external_attr)."""
    return stat.S_ISLNK(info.external_attr >> 16)


def safe_members(path: Path) -> dict[str, zipfile.ZipInfo]:
    """Every member of a zip by normalised name; refuses hostile names, symlinks and name collisions."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise UnsafeSourceError(f"{path}: not a readable zip archive ({exc})") from exc
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = normalize_name(info.filename, str(path))
        if _zip_is_symlink(info):
            raise UnsafeSourceError(f"{path}: refusing symbolic-link member {info.filename!r}")
        if name in members:
            raise UnsafeSourceError(f"{path}: members {members[name].filename!r} and {info.filename!r} collide")
        members[name] = info
    return members


class ImageSource(abc.ABC):
    """Images addressed by normalised relative name, read without extracting anything."""

    path: Path

    @abc.abstractmethod
    def names(self, near: Collection[str] | None = None) -> list[str]:
        """Image names in the source (folders: only the directories holding ``near`` when given)."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes:
        """The raw bytes of one image."""

    def locate(self, names: Sequence[str]) -> list[Any]:
        """Picklable handles a worker process reads with :meth:`read_located` without listing the source again."""
        return list(names)

    def read_located(self, handle: Any) -> bytes:
        """The bytes of one image from its :meth:`locate` handle."""
        return self.read(handle)

    @abc.abstractmethod
    def _signature(self, name: str) -> str:
        """A cheap per-image value that changes when the image's content changes."""

    def fingerprint(self, names: Sequence[str]) -> str:
        """Hex sha256 of the listing (names and signatures): a cache key without reading every image."""
        digest = hashlib.sha256(type(self).__name__.encode())
        for name in sorted(names):
            digest.update(f"{name}\0{self._signature(name)}\n".encode())
        return digest.hexdigest()


class ZipMember(NamedTuple):
    """Where one member's bytes lie in its archive, from the central directory (offset -1: no such member)."""

    name: str
    offset: int
    compressed: int
    size: int
    method: int
    crc: int


_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature ... name length, extra length (APPNOTE 4.3.7)
# Each takes the raw member bytes and a cap: a central directory that lies about a size cannot make a bomb.
_DECOMPRESS: dict[int, Callable[[bytes, int], bytes]] = {
    zipfile.ZIP_STORED: lambda raw, cap: raw[:cap],
    zipfile.ZIP_DEFLATED: lambda raw, cap: zlib.decompressobj(-15).decompress(raw, cap),
    zipfile.ZIP_BZIP2: lambda raw, cap: bz2.BZ2Decompressor().decompress(raw, cap),
}


class ZipSource(ImageSource):
    """Images inside a zip archive, read member by member in place.

    The central directory is read once, in the process that lists the archive; worker processes get each
    member's offset and sizes (:meth:`locate`) and read its bytes directly, so a GRIP-size archive of millions
    of members is not parsed again, and held again, by every worker.
    """

    def __init__(self, path: Path | str, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.__setstate__({"path": Path(path), "max_member_bytes": max_member_bytes})
        self._listing()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle only the path: a worker reads located members and never needs the listing."""
        return {"path": self.path, "max_member_bytes": self.max_member_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rebuild from the path, listing nothing until asked."""
        self.path: Path = state["path"]
        self.max_member_bytes: int = state["max_member_bytes"]
        self._members: dict[str, ZipMember] | None = None
        self._file: BinaryIO | None = None

    def _listing(self) -> dict[str, ZipMember]:
        """The checked central directory (hostile names, symlinks and collisions refused), read once."""
        if self._members is None:
            self._members = {
                name: ZipMember(name, info.header_offset, info.compress_size, info.file_size, info.compress_type,
                                info.CRC)
                for name, info in safe_members(self.path).items()
                if not info.is_dir()
            }
        return self._members

    def names(self, near: Collection[str] | None = None) -> list[str]:
        """Every image member (the zip's central directory is cheap to list whole)."""
        return [name for name in self._listing() if is_image_name(name)]

    def read(self, name: str) -> bytes:
        """A member's bytes, refusing members larger than ``max_member_bytes`` (zip bombs)."""
        return self.read_located(self.locate([name])[0])

    def locate(self, names: Sequence[str]) -> list[ZipMember]:
        """Each name's offset and sizes in the archive (a missing name gets offset -1 and fails when read)."""
        listing = self._listing()
        return [listing.get(name) or ZipMember(name, -1, 0, 0, 0, 0) for name in names]

    def read_located(self, member: ZipMember) -> bytes:
        """A located member's bytes, checked against its size and CRC-32 from the central directory."""
        where = f"{self.path}: member {member.name!r}"
        if member.offset < 0:
            raise FileNotFoundError(f"{self.path}: no member {member.name!r}")
        if member.size > self.max_member_bytes:
            raise UnsafeSourceError(f"{where} is {member.size} bytes uncompressed")
        if member.method not in _DECOMPRESS:
            raise DecodeError(member.name, f"zip compression method {member.method} is not supported "
                                           "(store or deflate the archive)")
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - held for the worker's life, like a memmap
        self._file.seek(member.offset)
        header = self._file.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"{where}: no local header at offset {member.offset}")
        name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
        self._file.seek(member.offset + _LOCAL_HEADER.size + name_len + extra_len)
        data = _DECOMPRESS[member.method](self._file.read(member.compressed), member.size + 1)
        if len(data) != member.size or zlib.crc32(data) != member.crc:
            raise zipfile.BadZipFile(f"{where} is corrupt (size or CRC-32 differs from the central directory)")
        return data

    def _signature(self, name: str) -> str:
        """The member's CRC-32 and size from the central directory."""
        member = self._listing()[name]
        return f"{member.crc:08x}:{member.size}"


class FolderSource(ImageSource):
    """Images in a folder tree; symlinks are followed only when they stay inside the folder."""

    def __init__(self, path: Path | str, max_member_bytes: int = MAX_MEMBER_BYTES) -> None:
        self.path = Path(path)
        self.max_member_bytes = max_member_bytes
        self._root = self.path.resolve()

    def names(self, near: Collection[str] | None = None) -> list[str]:
        """Image files under the folder; with ``near``, only in the directories that hold those names."""
        if near is None:
            dirs = (Path(d) for d, _, _ in os.walk(self.path))
        else:
            dirs = (self.path / p for p in sorted({os.path.dirname(n) for n in near}))
        found: list[str] = []
        for directory in dirs:
            found.extend(self._images_in(directory))
        return found

    def _images_in(self, directory: Path) -> Iterator[str]:
        """Normalised names of the image files directly in one directory (missing directory: none)."""
        if not directory.is_dir():
            return
        self._inside(directory)
        with os.scandir(directory) as entries:
            for entry in entries:
                if not is_image_name(entry.name):
                    continue
                if entry.is_symlink():
                    self._inside(Path(entry.path))
                if entry.is_file():
                    yield Path(entry.path).relative_to(self.path).as_posix()

    def _inside(self, path: Path) -> Path:
        """The resolved path, refusing one (e.g. a symlink) that points outside the folder."""
        real = path.resolve()
        if not real.is_relative_to(self._root):
            raise UnsafeSourceError(f"{self.path}: {path.relative_to(self.path)} points outside the folder ({real})")
        return real

    def read(self, name: str) -> bytes:
        """A file's bytes, refusing paths that leave the folder and files over ``max_member_bytes``."""
        path = self._inside(self.path / normalize_name(name, str(self.path)))
        size = path.stat().st_size
        if size > self.max_member_bytes:
            raise UnsafeSourceError(f"{self.path}: {name!r} is {size} bytes")
        return path.read_bytes()

    def _signature(self, name: str) -> str:
        """Size and modification time of the file (missing file: 'missing')."""
        try:
            st = (self.path / name).stat()
        except FileNotFoundError:
            return "missing"
        return f"{st.st_size}:{st.st_mtime_ns}"


def open_source(path: Path | str) -> ImageSource:
    """The image source at ``path``: a zip archive or a folder."""
    path = Path(path)
    if path.is_dir():
        return FolderSource(path)
    if path.is_file():
        return ZipSource(path)
    raise FileNotFoundError(f"image source {path} does not exist (expected a .zip file or a folder)")


def _copy_capped(src: BinaryIO, dst: BinaryIO, written: int, cap: int, where: str) -> int:
    """Copy a stream, failing once the running total passes ``cap`` (headers can lie about sizes)."""
    while chunk := src.read(_COPY_BLOCK):
        written += len(chunk)
        if written > cap:
            raise UnsafeSourceError(f"{where}: uncompressed content exceeds the cap of {cap} bytes")
        dst.write(chunk)
    return written


def safe_extract(zip_path: Path | str, target: Path | str, max_total_bytes: int = MAX_EXTRACT_BYTES) -> list[Path]:
    """Extract a zip into ``target`` (new or empty) atomically: never outside it, never past the size cap."""
    zip_path, target = Path(zip_path), Path(target)
    members = safe_members(zip_path)
    declared = sum(info.file_size for info in members.values())
    if declared > max_total_bytes:
        raise UnsafeSourceError(f"{zip_path}: declares {declared} bytes uncompressed, over the cap {max_total_bytes}")
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not empty; extract into a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _extract_members(zip_path, members, tmp, max_total_bytes)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [target / name for name, info in members.items() if not info.is_dir()]


def _extract_members(zip_path: Path, members: dict[str, zipfile.ZipInfo], dest: Path, cap: int) -> None:
    """Write every (already vetted) member under ``dest``, counting real uncompressed bytes."""
    root = dest.resolve()
    written = 0
    with zipfile.ZipFile(zip_path) as zf:
        for name, info in members.items():
            out = dest / name
            if not out.resolve().is_relative_to(root):
                raise UnsafeSourceError(f"{zip_path}: member {info.filename!r} resolves outside the target")
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "xb") as dst:
                written = _copy_capped(src, dst, written, cap, str(zip_path))


