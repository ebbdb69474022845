"""An imported lab folder written into a user's manifest as a named ``import`` entry (its files pinned by sha256),
so the next run finds it by name and refuses it when the lab's files have changed. The manifest's text (its
comments included) is kept: the entry is appended, the result checked to parse, then written atomically.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..files import atomic_write_text
from .layouts import Imported
from .manifest import ManifestError, find_manifest, load_manifest


def entry_text(imported: Imported, name: str, pixel_um: float | None = None) -> str:
    """The YAML of one ``import`` dataset entry (two-space indented under ``datasets:``)."""
    record = {
        "description": f"{imported.layout} import of {imported.source}",
        "import": {"path": str(imported.source), "name": name,
                   **({"pixel_um": pixel_um} if pixel_um else {}), "sha256": dict(sorted(imported.digests.items()))},
    }
    classes = load_manifest(imported.manifest).classes_of(imported.name)
    if "unlabelled" not in classes:
        record["classes"] = classes
    body = yaml.safe_dump({name: record}, sort_keys=False, allow_unicode=True)
    return "".join(f"  {line}\n" for line in body.splitlines())


def register_import(imported: Imported, manifest: Path, *, name: str, pixel_um: float | None = None) -> Path:
    """Append ``name`` to the manifest (created when absent; an existing name is refused, never replaced)."""
    try:
        path = find_manifest(manifest)
    except FileNotFoundError:
        path = Path(manifest).expanduser().resolve()
        classes = load_manifest(imported.manifest).classes_of(imported.name)
        header = yaml.safe_dump({"classes": classes}, sort_keys=False, allow_unicode=True)
        text = f"# Datasets icecore reads by name (written by `icecore import`).\n{header}datasets:\n"
    else:
        existing = load_manifest(path)
        if name in existing.datasets or name in existing.broken:
            raise ManifestError(f"{path}: a dataset named {name!r} exists already; choose another --name "
                                "(entries are never replaced)")
        text = path.read_text(encoding="utf-8")
        text = text if text.endswith("\n") else text + "\n"
    updated = text + entry_text(imported, name, pixel_um)
    check = atomic_write_text(path.with_name(f".{path.name}.check"), updated)
    try:
        parsed = load_manifest(check)
        parsed.dataset(name)
    except ManifestError as err:
        raise ManifestError(f"{path}: appending the entry would not parse ({err}); is `datasets:` its last "
                            "top-level key? Add the entry by hand:\n" + entry_text(imported, name, pixel_um)) from err
    finally:
        check.unlink(missing_ok=True)
    atomic_write_text(path, updated)
    return path
