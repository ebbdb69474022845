"""Benchmark: feeding crops from the zip (naive DataLoader) vs from the packed uint8 memmap, in one run.

A synthetic dataset is generated into a temp folder. Timed: decode + resize in one process (crops/s per
core), packing its train part (first call, then reuse of the cache). Then both loaders go over the same
particles in shuffled batches and yield float32 tensors (B, 1, S, S) of raw gray levels (normalisation
belongs to the model's device):
- baseline: a torch Dataset that opens the zip and PIL-decodes + resizes every item, in a DataLoader;
- packed: batches sliced from the memmap (indices sorted within a batch), torch.from_numpy, .float().
Each loader is timed in interleaved rounds and its best rate is kept, so a busy machine hurts both alike.

    python bench/loader.py                              # ci profile, 64 px, batch 128
    python bench/loader.py --n 500 --image-size 128     # 500 crops per class
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from icecore_lib.config import synth_config
from icecore_lib.data.manifest import CsvFile, ResolvedPart
from icecore_lib.data.pack import pack_part
from icecore_lib.images.decode import decode_many
from icecore_lib.images.sources import ZipSource
from icecore_lib.schema import CLASSES, IMGPATH
from icecore_lib.synth.dataset import generate


class ZipCropDataset(Dataset):
    """The naive loader: each item opens its PNG inside the zip, decodes it and resizes it."""

    def __init__(self, archive: Path, names: list[str], size: int) -> None:
        self.archive, self.names, self.size = archive, names, size
        self._zip: zipfile.ZipFile | None = None

    def __len__(self) -> int:
        """Number of crops."""
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        """One crop as a (1, S, S) float tensor."""
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.archive)
        image = Image.open(io.BytesIO(self._zip.read(self.names[i]))).convert("L").resize((self.size, self.size))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).float().unsqueeze(0)


def packed_batches(images: np.ndarray, batch_size: int, seed: int, to_float: bool = True) -> Iterator[torch.Tensor]:
    """Shuffled batches sliced from the packed array: (B, 1, S, S) float tensors, or uint8 ones as a GPU gets them."""
    order = np.random.default_rng(seed).permutation(len(images))
    for start in range(0, len(order), batch_size):
        batch = torch.from_numpy(images[np.sort(order[start:start + batch_size])]).unsqueeze(1)
        yield batch.float() if to_float else batch


def rate(batches: Loader, min_seconds: float) -> float:
    """Images per second over whole passes, repeated until ``min_seconds`` have elapsed."""
    n, start = 0, time.perf_counter()
    while True:
        for batch in batches():
            n += len(batch)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


Loader = Callable[[], Iterator[torch.Tensor]]


def best_rates(loaders: dict[str, Loader], seconds: float, rounds: int) -> dict[str, float]:
    """The best images/s of each loader over ``rounds`` interleaved timings (robust to a busy machine)."""
    best = dict.fromkeys(loaders, 0.0)
    for _ in range(rounds):
        for name, batches in loaders.items():
            best[name] = max(best[name], rate(batches, seconds / rounds))
    return best


def decode_rate(archive: Path, names: list[str], size: int, tmp: Path) -> float:
    """Crops per CPU-second of the packer's decode + resize into a memmap (per core, whatever else runs)."""
    out = tmp / "decode_rate.npy"
    np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(len(names), size, size)).flush()
    start = time.process_time()
    decode_many(ZipSource(archive), names, out=out, workers=1, progress=False)
    return len(names) / (time.process_time() - start)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="ci", help="synthetic profile (ci, demo, full)")
    p.add_argument("--n", type=int, default=None, help="crops per class (overrides the profile)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=1, help="processes for packing and for the baseline DataLoader")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per loader, split over the rounds")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timings per loader; the best is kept")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    """Generate, pack, time both loaders, print the table."""
    args = parse_args()
    torch.set_num_threads(1)
    overrides = {"n_core": 0, "workers": args.workers} | ({"n_train_per_class": args.n} if args.n else {})
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        t0 = time.perf_counter()
        generate(data, synth_config(args.profile, seed=args.seed, **overrides), progress=False)
        print(f"generated {args.profile} data in {time.perf_counter() - t0:.1f} s")
        names = pd.read_csv(data / "train.csv")[IMGPATH].tolist()
        per_core = decode_rate(data / "train.zip", names, args.image_size, Path(tmp))
        print(f"decode + resize in one process: {per_core:,.0f} crops per CPU-second")
        part = ResolvedPart(dataset="bench", part="train", root=data, images=data / "train.zip",
                            csvs=(CsvFile(data / "train.csv", "train.csv"),), classes=tuple(CLASSES))
        timings = {}
        for attempt in ("first", "reuse"):
            t0 = time.perf_counter()
            packed = pack_part(part, args.image_size, Path(tmp) / "cache", workers=args.workers, progress=False)
            timings[attempt] = time.perf_counter() - t0
        n = len(packed)
        print(f"pack {n} crops at {args.image_size} px with {args.workers} worker(s): {timings['first']:.2f} s "
              f"({n / timings['first']:,.0f} crops/s incl. CSV check), reuse: {timings['reuse']:.3f} s")

        dataset = ZipCropDataset(data / "train.zip", names, args.image_size)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers - 1,
                            generator=torch.Generator().manual_seed(args.seed))
        loaders = {
            "baseline: zip + PIL per item": lambda: iter(loader),
            "packed: memmap slices -> float": lambda: packed_batches(packed.images, args.batch_size, args.seed),
            "packed: uint8 slices (for a GPU)": lambda: packed_batches(packed.images, args.batch_size, args.seed,
                                                                       to_float=False),
        }
        rates = best_rates(loaders, args.seconds, args.rounds)
        baseline = rates["baseline: zip + PIL per item"]
        print(f"{'loader':<36}{'images/s':>12}{'x baseline':>12}")
        for name, value in rates.items():
            print(f"{name:<36}{value:>12,.0f}{value / baseline:>12,.1f}")


if __name__ == "__main__":
    main()
