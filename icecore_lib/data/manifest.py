"""The data manifest: ``data_manifest.yaml`` read with ``yaml.safe_load`` into typed specs.

Every unknown key or unknown dataset is an error naming it; :mod:`icecore_lib.data.resolve` turns a spec into
files on disk (synthetic datasets generated on first use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import PROFILE_NAMES, SYNTH_VERSION, SynthConfig, synth_config
from ..schema import DEPTH, FLOWCAM_FEATURES, IMGPATH, LABEL, SAMPLE, SESSION, VOLUME

PART_NAMES = ("train", "core", "truth")
PARTS_WITH_IMAGES = ("train", "core")
TABLE_COLUMNS = (IMGPATH, LABEL, SESSION, SAMPLE, DEPTH, VOLUME, *FLOWCAM_FEATURES)
_TOP_KEYS = ("classes", "datasets")
_DATASET_KEYS = ("description", "source", "root", "synthetic", "import", "parts", "classes")
_IMPORT_KEYS = ("path", "name", "pixel_um", "sha256")
_SYNTH_KEYS = ("profile", "seed", "overrides")
_PART_KEYS = ("csv", "images", "columns", "imgpath_prefix", "session_pattern", "sha256")
_CSV_KEYS = ("path", "label")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest that is malformed or names something that does not exist."""


@dataclass(frozen=True)
class CsvSpec:
    """One CSV of a part, as written in the manifest; ``label`` when the file holds a single class."""

    path: str
    label: str | None = None


@dataclass(frozen=True)
class PartSpec:
    """One part (train, core or truth) of a dataset, as written in the manifest."""

    csv: tuple[CsvSpec, ...]
    images: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    imgpath_prefix: str = ""
    session_pattern: str = ""
    sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SyntheticSpec:
    """How a synthetic dataset is generated: a profile, a seed and optional SynthConfig overrides."""

    profile: str
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """Cache folder name: ``<profile>-seed<seed>-v<generator version>``, plus a digest of any overrides."""
        base = f"{self.profile}-seed{self.seed}-v{SYNTH_VERSION}"
        if not self.overrides:
            return base
        digest = hashlib.sha256(json.dumps(dict(self.overrides), sort_keys=True).encode()).hexdigest()
        return f"{base}-{digest[:8]}"

    def config(self) -> SynthConfig:
        """The generator's config."""
        return synth_config(self.profile, self.seed, **self.overrides)


@dataclass(frozen=True)
class ImportSpec:
    """A lab's own folder or file, imported on first use (:mod:`icecore_lib.data.layouts`) and pinned by sha256."""

    path: str  # the folder or CSV (``${ENV_VARS}`` expanded; relative to the manifest's folder)
    name: str = ""  # the imported dataset's name (default: derived from the path)
    pixel_um: float | None = None  # micrometres per pixel, when features are computed from the crops
    sha256: Mapping[str, str] = field(default_factory=dict)  # the lab's files (relative to path) -> digest


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset entry of the manifest."""

    name: str
    parts: Mapping[str, PartSpec]
    description: str = ""
    source: Mapping[str, str] = field(default_factory=dict)
    root: str | None = None
    synthetic: SyntheticSpec | None = None
    imported: ImportSpec | None = None
    classes: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Manifest:
    """The whole manifest: class display names and the datasets, with the file it came from.

    An entry that does not parse is kept in ``broken`` with its error: it fails when used, the others work.
    """

    path: Path
    classes: Mapping[str, str]
    datasets: Mapping[str, DatasetSpec]
    broken: Mapping[str, str] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetSpec:
        """The named dataset; an unknown name is an error listing the known ones and how to add one."""
        if name in self.broken:
            raise ManifestError(self.broken[name])
        if name not in self.datasets:
            known = ", ".join(sorted([*self.datasets, *self.broken]))
            raise ManifestError(
                f"{self.path}: no dataset {name!r}; known datasets: {known}. A lab's own folder or CSV can be given "
                "by its path instead of a name (`icecore check PATH`), or added by name with "
                "`icecore import PATH --name NAME`")
        return self.datasets[name]

    def classes_of(self, name: str) -> dict[str, str]:
        """Class key -> display name for a dataset (its own ``classes:`` if it has one)."""
        own = self.dataset(name).classes
        return dict(self.classes if own is None else own)


@dataclass(frozen=True)
class CsvFile:
    """A concrete CSV file of a part; ``name`` is its path as written in the manifest."""

    path: Path
    name: str
    label: str | None = None


@dataclass(frozen=True)
class ResolvedPart:
    """A part resolved to concrete, existing files: what validation and packing read."""

    dataset: str
    part: str
    root: Path
    csvs: tuple[CsvFile, ...]
    images: Path | None
    classes: tuple[str, ...]
    columns: Mapping[str, str] = field(default_factory=dict)
    imgpath_prefix: str = ""
    session_pattern: str = ""
    sha256: Mapping[Path, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``dataset/part``, the name used in messages and reports."""
        return f"{self.dataset}/{self.part}"


def find_manifest(path: Path | str = "data_manifest.yaml") -> Path:
    """The manifest file: ``path`` itself, or (relative paths) the first match in the working dir or a parent."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"manifest {path} not found")
        return path.resolve()
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / path).is_file():
            return (folder / path).resolve()
    raise FileNotFoundError(f"manifest {path} not found in {Path.cwd()} or any parent folder")


def load_manifest(path: Path | str = "data_manifest.yaml") -> Manifest:
    """Read and check a manifest file (``yaml.safe_load``)."""
    path = find_manifest(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path}: not valid YAML ({exc})") from exc
    top = _mapping(raw, f"{path}", _TOP_KEYS)
    classes = _string_map(top.get("classes", {}), f"{path}: classes")
    if not classes:
        raise ManifestError(f"{path}: `classes:` is missing or empty")
    datasets = _mapping(top.get("datasets", {}), f"{path}: datasets")
    specs, broken = {}, {}
    for key, entry in datasets.items():
        try:
            specs[str(key)] = _parse_dataset(str(key), entry, f"{path}: dataset {key!r}")
        except ManifestError as err:
            broken[str(key)] = str(err)
    return Manifest(path=path, classes=classes, datasets=specs, broken=broken)


def _mapping(raw: Any, where: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``raw`` as a dict, refusing non-mappings and (when ``allowed`` is given) unknown keys."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping, got {type(raw).__name__}")
    if allowed is not None:
        unknown = sorted(str(k) for k in raw if k not in allowed)
        if unknown:
            raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    return raw


def _string_map(raw: Any, where: str) -> dict[str, str]:
    """A mapping of strings to strings (YAML scalars are turned into text)."""
    out = {}
    for key, value in _mapping(raw, where).items():
        if isinstance(value, (dict, list)) or value is None:
            raise ManifestError(f"{where}: value of {key!r} must be text")
        out[str(key)] = str(value)
    return out


def _parse_dataset(name: str, raw: Any, where: str) -> DatasetSpec:
    """One dataset entry."""
    entry = _mapping(raw, where, _DATASET_KEYS)
    classes = _string_map(entry["classes"], f"{where}: classes") if "classes" in entry else None
    if "import" in entry:
        return _parse_import_entry(name, entry, classes, where)
    synthetic = _parse_synthetic(entry["synthetic"], f"{where}: synthetic") if "synthetic" in entry else None
    if synthetic is not None and entry.get("root"):
        raise ManifestError(f"{where}: a synthetic dataset lives in the cache; remove `root`")
    if synthetic is None and not entry.get("root"):
        raise ManifestError(f"{where}: needs `root` (where its files are) or `synthetic`")
    raw_parts = _mapping(entry.get("parts"), f"{where}: parts", PART_NAMES)
    if not raw_parts:
        raise ManifestError(f"{where}: no `parts` (one of {', '.join(PART_NAMES)})")
    parts = {p: _parse_part(p, spec, f"{where}: part {p!r}") for p, spec in raw_parts.items()}
    return DatasetSpec(
        name=name, parts=parts, description=str(entry.get("description", "")),
        source=_string_map(entry.get("source", {}), f"{where}: source"),
        root=str(entry["root"]) if entry.get("root") else None, synthetic=synthetic, classes=classes,
    )


def _parse_import_entry(name: str, entry: dict[str, Any], classes: dict[str, str] | None, where: str) -> DatasetSpec:
    """A dataset imported from a lab's folder: no root, synthetic or parts of its own (the import makes them)."""
    clash = sorted(set(entry) & {"root", "synthetic", "parts"})
    if clash:
        raise ManifestError(f"{where}: an `import` dataset gets its files from the import; remove {', '.join(clash)}")
    spec = _mapping(entry["import"], f"{where}: import", _IMPORT_KEYS)
    if not spec.get("path"):
        raise ManifestError(f"{where}: import needs `path` (the lab's folder or CSV)")
    sha = _sha_map(spec.get("sha256", {}), f"{where}: import: sha256")
    pixel = spec.get("pixel_um")
    if pixel is not None and not (isinstance(pixel, (int, float)) and pixel > 0):
        raise ManifestError(f"{where}: import: pixel_um must be a positive number, got {pixel!r}")
    imported = ImportSpec(path=str(spec["path"]), name=str(spec.get("name", "")),
                          pixel_um=None if pixel is None else float(pixel), sha256=sha)
    return DatasetSpec(name=name, parts={}, description=str(entry.get("description", "")),
                       source=_string_map(entry.get("source", {}), f"{where}: source"), imported=imported,
                       classes=classes)


def _sha_map(raw: Any, where: str) -> dict[str, str]:
    """``{file: sha256}`` with every digest checked to be 64 hex digits (lower-cased)."""
    sha = _string_map(raw, where)
    for file, digest in sha.items():
        if not _SHA256.match(digest.lower()):
            raise ManifestError(f"{where}: sha256 of {file!r} is not 64 hex digits: {digest!r}")
    return {k: v.lower() for k, v in sha.items()}


def _parse_synthetic(raw: Any, where: str) -> SyntheticSpec:
    """The ``synthetic:`` block of a dataset."""
    spec = _mapping(raw, where, _SYNTH_KEYS)
    profile = spec.get("profile")
    if profile not in PROFILE_NAMES:
        raise ManifestError(f"{where}: profile {profile!r} is not one of {', '.join(PROFILE_NAMES)}")
    overrides = _mapping(spec.get("overrides", {}), f"{where}: overrides")
    known = {f.name for f in dataclasses.fields(SynthConfig)} - {"profile", "seed"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ManifestError(f"{where}: unknown override(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int):
        raise ManifestError(f"{where}: seed must be an integer, got {seed!r}")
    return SyntheticSpec(profile=profile, seed=seed, overrides=overrides)


def _parse_part(part: str, raw: Any, where: str) -> PartSpec:
    """One part of a dataset."""
    spec = _mapping(raw, where, _PART_KEYS)
    csvs = _parse_csvs(spec.get("csv"), f"{where}: csv")
    images = spec.get("images")
    if part in PARTS_WITH_IMAGES and not images:
        raise ManifestError(f"{where}: needs `images` (a .zip or a folder)")
    columns = _string_map(spec.get("columns", {}), f"{where}: columns")
    bad_targets = sorted(set(columns.values()) - set(TABLE_COLUMNS))
    if bad_targets:
        known = ", ".join(TABLE_COLUMNS)
        raise ManifestError(f"{where}: columns map to unknown column(s) {bad_targets}; known: {known}")
    sha = _sha_map(spec.get("sha256", {}), f"{where}: sha256")
    pattern = str(spec.get("session_pattern", ""))
    _check_pattern(pattern, where)
    return PartSpec(
        csv=csvs, images=str(images) if images else None, columns=columns,
        imgpath_prefix=str(spec.get("imgpath_prefix", "")), session_pattern=pattern,
        sha256=sha,
    )


def _parse_csvs(raw: Any, where: str) -> tuple[CsvSpec, ...]:
    """``csv:`` as one path, or a list of paths / {path, label} items."""
    items = raw if isinstance(raw, list) else [raw]
    specs = []
    for item in items:
        if isinstance(item, str) and item:
            specs.append(CsvSpec(path=item))
            continue
        entry = _mapping(item, where, _CSV_KEYS)
        if not entry.get("path"):
            raise ManifestError(f"{where}: each CSV needs a `path`")
        label = entry.get("label")
        specs.append(CsvSpec(path=str(entry["path"]), label=None if label is None else str(label)))
    return tuple(specs)


def _check_pattern(pattern: str, where: str) -> None:
    """A session pattern must compile and have exactly one group."""
    if not pattern:
        return
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ManifestError(f"{where}: session_pattern {pattern!r} is not a valid regex ({exc})") from exc
    if groups != 1:
        raise ManifestError(f"{where}: session_pattern {pattern!r} needs exactly one (group), has {groups}")


