"""A manifest dataset resolved to files on disk: its root (environment variables expanded), or, for synthetic data,
the cache folder the generator fills on first use, or, for an ``import`` entry, the lab's folder imported on first
use (:mod:`icecore_lib.data.layouts`); every CSV and image source checked to exist.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from ..config import default_cache_dir
from ..synth.dataset import generate
from .layouts import Imported, import_path
from .manifest import (
    CsvFile,
    DatasetSpec,
    ImportSpec,
    Manifest,
    ManifestError,
    ResolvedPart,
    SyntheticSpec,
    load_manifest,
)


def dataset_root(manifest: Manifest, name: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Where a dataset's files are: its ``root`` (env vars expanded), or its synthetic cache folder."""
    spec = manifest.dataset(name)
    if spec.synthetic is not None:
        return ensure_synthetic(spec.synthetic, cache_dir or default_cache_dir(), progress=progress)
    return _expanded(manifest, name, str(spec.root), "root")


def _expanded(manifest: Manifest, name: str, text: str, key: str) -> Path:
    """A manifest path with ``${ENV_VARS}`` expanded, relative paths taken from the manifest's folder."""
    spec = manifest.dataset(name)
    try:
        text = string.Template(text).substitute(os.environ)
    except KeyError as exc:
        how = spec.source.get("instructions", "set it to the folder that holds the data")
        unset = "${" + exc.args[0] + "}"
        raise ManifestError(f"dataset {name!r}: {key} {text!r} uses {unset}, which is not set. {how}") from exc
    path = Path(text).expanduser()
    return path if path.is_absolute() else manifest.path.parent / path


def ensure_imported(manifest: Manifest, name: str, cache_dir: Path | None = None, progress: bool = True) -> Imported:
    """An ``import`` entry's lab folder imported (once; reused while unchanged), its pinned files verified."""
    spec: ImportSpec = manifest.dataset(name).imported
    source = _expanded(manifest, name, spec.path, "import path")
    imported = import_path(source, cache_dir or default_cache_dir(), name=spec.name or name,
                           pixel_um=spec.pixel_um, progress=progress)
    digests = imported.digests
    for file, expected in spec.sha256.items():
        if digests.get(file) != expected:
            found = digests.get(file, "no such file among the imported ones")
            raise ManifestError(f"dataset {name!r}: {source / file} has sha256 {found}; the manifest pins "
                                f"{expected} (the lab's file changed since `icecore import`)")
    return imported


def concrete(manifest: Manifest, name: str, cache_dir: Path | None = None, progress: bool = True
             ) -> tuple[Manifest, str]:
    """The manifest and name that hold a dataset's parts: an ``import`` entry leads to its generated manifest."""
    if manifest.dataset(name).imported is None:
        return manifest, name
    imported = ensure_imported(manifest, name, cache_dir, progress)
    return load_manifest(imported.manifest), imported.name


def dataset_classes(manifest: Manifest, name: str, cache_dir: Path | None = None, progress: bool = True
                    ) -> dict[str, str]:
    """Class key -> display name of a dataset (an imported one's classes come from its data)."""
    own = manifest.dataset(name).classes
    if own is not None:
        return dict(own)
    inner, inner_name = concrete(manifest, name, cache_dir, progress)
    return inner.classes_of(inner_name)


def ensure_synthetic(spec: SyntheticSpec, cache_dir: Path, progress: bool = True) -> Path:
    """The synthetic dataset's folder, generated on first use (the generator writes atomically)."""
    target = Path(cache_dir) / "synthetic" / spec.folder
    if not target.is_dir():
        generate(target, spec.config(), progress=progress)
    return target


def resolve_part(
    manifest: Manifest, dataset: str, part: str, cache_dir: Path | None = None, progress: bool = True
) -> ResolvedPart:
    """A dataset part with every file resolved and checked to exist (synthetic data generated, lab data imported)."""
    manifest, dataset = concrete(manifest, dataset, cache_dir, progress)
    spec = manifest.dataset(dataset)
    if part not in spec.parts:
        raise ManifestError(f"dataset {dataset!r} has no part {part!r}; it has: {', '.join(spec.parts)}")
    root = dataset_root(manifest, dataset, cache_dir, progress)
    pspec = spec.parts[part]
    where = f"dataset {dataset!r}, part {part!r}"
    csvs = tuple(CsvFile(path=_existing(root, c.path, where, spec), name=c.path, label=c.label) for c in pspec.csv)
    images = _existing(root, pspec.images, where, spec) if pspec.images else None
    files = {c.name: c.path for c in csvs} | ({pspec.images: images} if images is not None else {})
    sha = {}
    for file, digest in pspec.sha256.items():
        if file not in files or files[file].is_dir():
            raise ManifestError(f"{where}: sha256 names {file!r}, which is not one of its CSV or zip files")
        sha[files[file]] = digest
    return ResolvedPart(
        dataset=dataset, part=part, root=root, csvs=csvs, images=images,
        classes=tuple(manifest.classes_of(dataset)), columns=dict(pspec.columns),
        imgpath_prefix=pspec.imgpath_prefix, session_pattern=pspec.session_pattern, sha256=sha,
    )


def _existing(root: Path, relative: str, where: str, spec: DatasetSpec) -> Path:
    """``root / relative``, which must exist; the error says where to get the data."""
    path = root / relative
    if not path.exists():
        hint = f" Get the data: {', '.join(f'{k}: {v}' for k, v in spec.source.items())}" if spec.source else ""
        raise FileNotFoundError(f"{where}: {relative} not found at {path}.{hint}")
    return path


def resolve_parts(
    manifest: Manifest, dataset: str, cache_dir: Path | None = None, progress: bool = True
) -> dict[str, ResolvedPart]:
    """Every part of a dataset, resolved, in the manifest's order."""
    manifest, dataset = concrete(manifest, dataset, cache_dir, progress)
    return {p: resolve_part(manifest, dataset, p, cache_dir, progress) for p in manifest.dataset(dataset).parts}
