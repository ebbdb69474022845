"""Colab set-up: the GPU at a glance, and zipped data copied from Drive to the local disk before packing.

Reading crops from Drive batch by batch erases a GPU's speed-up (the reference study's lesson), so the
archives are copied once to the VM's local disk, and the manifest's ``${ICECORE_DATA}`` points there.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..files import atomic_path

LOCAL_DATA = Path("/content/icecore_data")
_CHUNK = 8 * 1024 * 1024


def in_colab() -> bool:
    """Whether this kernel runs on Google Colab."""
    return "google.colab" in sys.modules


def gpu_summary() -> str:
    """One line on the accelerator torch sees (name and memory), or that there is none."""
    import torch

    if not torch.cuda.is_available():
        return "no GPU: training runs on the CPU (on Colab: Runtime > Change runtime type > GPU)"
    props = torch.cuda.get_device_properties(0)
    return f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)"


def _same_file(a: Path, b: Path) -> bool:
    """Whether a local copy matches its source by size and modification time (copies keep the source's mtime;
    a half-copied file never appears, the copy is atomic). The manifest's sha256 check still guards content."""
    if not b.exists():
        return False
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and int(sa.st_mtime) == int(sb.st_mtime)


def stage_files(sources: list[Path | str], dest: Path | str = LOCAL_DATA, *, progress: bool = True) -> list[Path]:
    """Copy files (e.g. zips on Drive) into ``dest`` once, atomically; files already there intact are skipped."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in map(Path, sources):
        if not source.is_file():
            raise FileNotFoundError(f"{source} does not exist (is Drive mounted, and is the path right?)")
        target = dest / source.name
        if not _same_file(source, target):
            _copy(source, target, progress)
        copied.append(target)
    return copied


def _copy(source: Path, target: Path, progress: bool) -> None:
    """Copy one file with a byte progress bar; the target appears only when complete."""
    with atomic_path(target) as tmp, source.open("rb") as src, tmp.open("wb") as out, tqdm(
        total=source.stat().st_size, unit="B", unit_scale=True, desc=source.name, disable=not progress
    ) as bar:
        for block in iter(lambda: src.read(_CHUNK), b""):
            out.write(block)
            bar.update(len(block))
    shutil.copystat(source, target)


def prepare(drive_folder: str = "", dest: Path | str = LOCAL_DATA, *, progress: bool = True) -> Path | None:
    """On Colab: mount Drive, copy every file of ``drive_folder`` to local disk, point ``ICECORE_DATA`` there.

    Elsewhere (or with no folder given) it does nothing and returns None; the GPU line is printed either way.
    """
    print(gpu_summary())
    if not (in_colab() and drive_folder):
        return None
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount("/content/drive")
    folder = Path(drive_folder)
    stage_files(sorted(p for p in folder.iterdir() if p.is_file()), dest, progress=progress)
    os.environ["ICECORE_DATA"] = str(dest)
    print(f"data copied from {folder} to {dest}; ICECORE_DATA={dest}")
    return Path(dest)
