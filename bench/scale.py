"""Benchmark: a GRIP-scale core (3 million particles) packed and classified without holding it in RAM.

A core part in the instrument's format is written to a folder: one CSV row (imgpaths + the 34 FlowCam
features) and one PNG in a zip per particle, the crops and rows copied round-robin from a small synthetic core
(its smallest crops, as a dust-dominated core is). Then, in one run:

1. pack: the real ``pack_part`` (check, decode + resize in parallel over every core, atomic publish), stopped
   once ``--interrupt-at`` of the crops are journalled, and resumed, reporting what the resumed run still had to decode;
2. classify: an image ResNet18 (random weights: speed and memory, not accuracy) streams ``--classify-rows``
   rows of the packed memmap through the same batch path and ``predict`` the notebooks use.

Memory is sampled every 0.2 s as private (anonymous) resident memory of this process and its workers; pages
of the memory-mapped array are file-backed cache the OS can drop, so they are reported apart, not as RAM held.

    python bench/scale.py                                   # 3,000,000 particles at 64 px
    python bench/scale.py --n 200000 --classify-rows 20000  # a quicker look
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from icecore_lib.config import synth_config
from icecore_lib.data.manifest import CsvFile, ResolvedPart
from icecore_lib.data.pack import pack_part
from icecore_lib.images.decode import DECODE_CHUNK, default_workers
from icecore_lib.schema import CLASSES, IMGPATH
from icecore_lib.synth.dataset import generate

# torch and the models are imported where the CNN runs: packing workers are spawned processes that re-import
# this script, and each would otherwise load torch (hundreds of MB of private memory per worker) for nothing.

GIB = 1024**3


class MemorySampler:
    """Peak private resident memory (RSS minus shared pages) of this process and its children."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _private(self) -> int:
        """Current private memory of the process tree, in bytes."""
        total = 0
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                info = proc.memory_info()
                total += info.rss - getattr(info, "shared", 0)
            except psutil.Error:
                continue
        return total

    def _run(self) -> None:
        """Sample until stopped."""
        while not self._stop.is_set():
            self.peak = max(self.peak, self._private())
            self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[MemorySampler]:
        """Sample in a background thread while the block runs."""
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def base_crops(folder: Path, seed: int, max_bytes: int) -> tuple[pd.DataFrame, list[bytes]]:
    """Rows and PNG bytes of a small synthetic core's crops no larger than ``max_bytes`` (dust-sized)."""
    generate(folder, synth_config("ci", seed=seed, n_train_per_class=10, n_core=2000), progress=False)
    rows = pd.read_csv(folder / "core.csv")
    with zipfile.ZipFile(folder / "core.zip") as zf:
        data = [zf.read(name) for name in rows[IMGPATH]]
    keep = [i for i, blob in enumerate(data) if len(blob) <= max_bytes]
    return rows.iloc[keep].reset_index(drop=True), [data[i] for i in keep]


def write_core(folder: Path, n: int, rows: pd.DataFrame, crops: list[bytes]) -> ResolvedPart:
    """A core part of ``n`` particles in the instrument's format (CSV + zip of PNGs), copied round-robin."""
    folder.mkdir(parents=True)
    pick = np.arange(n) % len(rows)
    names = [f"grip/grip_{i:08d}.png" for i in range(n)]
    with zipfile.ZipFile(folder / "core.zip", "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, source in zip(names, pick):
            zf.writestr(name, crops[source])
    table = rows.iloc[pick].drop(columns=[IMGPATH]).reset_index(drop=True)
    table.insert(0, IMGPATH, names)
    table.to_csv(folder / "core.csv", index=False)
    return ResolvedPart(dataset="grip", part="core", root=folder, images=folder / "core.zip",
                        csvs=(CsvFile(folder / "core.csv", "core.csv"),), classes=tuple(CLASSES))


def _pack_in_child(part: ResolvedPart, size: int, cache: Path, workers: int) -> None:
    """Pack in a child process (so the benchmark can stop it like a lost runtime would)."""
    pack_part(part, size, cache, workers=workers, progress=False)


def journal_records(cache: Path) -> list[Path]:
    """The chunk records in the journal of an unfinished pack."""
    return list(cache.glob("packed/.*.partial/journal/*.json"))


def journalled(cache: Path) -> int:
    """Crops the journal of an unfinished pack records as decoded."""
    return sum(len(pd.read_json(path, typ="series")["shapes"]) for path in journal_records(cache))


def interrupted_pack(part: ResolvedPart, n: int, size: int, cache: Path, workers: int, fraction: float
                     ) -> tuple[int, float]:
    """Start packing and kill it once its journal holds ``fraction`` of the crops (like a lost runtime);
    return the crops it had journalled and the seconds it ran."""
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_pack_in_child, args=(part, size, cache, workers))
    start = time.perf_counter()
    child.start()
    while child.is_alive() and len(journal_records(cache)) * DECODE_CHUNK < fraction * n:
        time.sleep(0.5)
    for proc in psutil.Process(child.pid).children(recursive=True) if child.is_alive() else []:
        proc.kill()
    child.kill()
    child.join()
    return journalled(cache), time.perf_counter() - start


def classify_stream(images: np.ndarray, rows: int, batch_size: int, device_name: str) -> tuple[float, int, str]:
    """Images/s of ResNet18 streaming ``rows`` packed crops through the notebooks' batch path; predictions kept.

    On CUDA the rows go to the GPU once when they fit (the notebooks' device-resident path), else through the
    DataLoader; the clock includes that upload. Returns the rate, the rows predicted and where they ran."""
    import torch

    from icecore_lib.config import TrainConfig
    from icecore_lib.nn.batches import choose_batches
    from icecore_lib.nn.device import resolve_device
    from icecore_lib.nn.loop import predict
    from icecore_lib.train.classifier import build_torch_classifier

    device = resolve_device(device_name)
    model = build_torch_classifier("image", len(CLASSES), TrainConfig())
    start = time.perf_counter()
    batches = choose_batches(images, np.arange(rows), batch_size=batch_size, shuffle=False, device=device,
                             progress=False)
    logits, _ = predict(model, batches, progress=False)
    rate = rows / (time.perf_counter() - start)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU thread(s)"
    return rate, len(logits), where


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=3_000_000, help="particles in the core")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="packing processes (0 = every core)")
    p.add_argument("--max-crop-bytes", type=int, default=3000, help="largest PNG copied into the core")
    p.add_argument("--interrupt-at", type=float, default=0.3, help="journalled share at which the first pack is killed")
    p.add_argument("--classify-rows", type=int, default=50_000, help="rows streamed through the CNN")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="where the CNN runs: cpu, cuda or auto")
    p.add_argument("--dir", default="", help="work folder (default: a temp folder, removed after)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    """Write the core, pack it (interrupted, resumed), stream part of it through the CNN, print the numbers."""
    args = parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="icecore-scale-"))
    workers = default_workers(args.workers)
    try:
        t0 = time.perf_counter()
        rows, crops = base_crops(work / "base", args.seed, args.max_crop_bytes)
        part = write_core(work / "grip", args.n, rows, crops)
        zip_gib = (work / "grip" / "core.zip").stat().st_size / GIB
        print(f"wrote {args.n:,} particles ({len(crops)} distinct crops, mean {np.mean([len(c) for c in crops]):,.0f} "
              f"bytes; zip {zip_gib:.2f} GiB) in {time.perf_counter() - t0:.0f} s")

        cache = work / "cache"
        t0 = time.perf_counter()
        done_before, first = interrupted_pack(part, args.n, args.image_size, cache, workers, args.interrupt_at)
        print(f"pack killed after {first:.0f} s with {done_before:,} crops decoded and journalled")
        sampler = MemorySampler()
        t0 = time.perf_counter()
        with sampler.running():
            packed = pack_part(part, args.image_size, cache, workers=workers, progress=False)
        resumed = time.perf_counter() - t0
        left = len(packed) - done_before
        array_gib = packed.images.nbytes / GIB
        print(f"resumed: {left:,} crops left, done in {resumed:.0f} s ({left / resumed:,.0f} crops/s with {workers} "
              f"process(es), {left / resumed / workers:,.0f} per process, CSV check and listing included)")
        print(f"packed array {packed.images.shape} uint8 = {array_gib:.2f} GiB on disk; "
              f"peak private memory while packing {sampler.peak / GIB:.2f} GiB")

        rows_to_classify = min(args.classify_rows, len(packed))
        sampler = MemorySampler()
        with sampler.running():
            rate, n_out, where = classify_stream(packed.images, rows_to_classify, args.batch_size, args.device)
        print(f"classify: {n_out:,} rows streamed at {rate:,.0f} img/s on {where} "
              f"(the whole core: {len(packed) / rate / 60:,.1f} min at this rate); "
              f"peak private memory {sampler.peak / GIB:.2f} GiB")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
