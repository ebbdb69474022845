"""Training throughput: the full data path against the same ResNet18 fed from one in-memory tensor.

    python bench/train.py --image-size 64 --batch-size 64 --steps 10 --device auto

Pipeline: packed uint8 memmap -> choose_batches (device-resident on CUDA, DataLoader on CPU) ->
augment -> ParticleCNN step, timed by ``fit`` itself (second epoch, so warm-up is excluded).
Baseline: the same model and optimizer stepping over slices of one pre-normalised float tensor already
on the device. The ratio pipeline/baseline is the data path's cost (1.0 = free). On CUDA it adds
ResNet18 at 128 px under bf16 + channels_last with torch.compile off and on.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icecore_lib.config import TrainConfig
from icecore_lib.models.cnn import ParticleCNN
from icecore_lib.nn.batches import choose_batches
from icecore_lib.nn.device import resolve_device, seed_everything
from icecore_lib.nn.loop import fit

N_CLASSES = 7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs/loops per measurement; the best counts")
    return parser.parse_args(argv)


def packed_array(folder: Path, n: int, size: int, seed: int = 0) -> np.memmap:
    """A read-only uint8 memmap of random gray images, like the packed cache."""
    path = folder / f"bench_{n}x{size}.u8"
    writer = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, size, size))
    writer[:] = np.random.default_rng(seed).integers(60, 140, (n, size, size), dtype=np.uint8)
    writer.flush()
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, size, size))


def pipeline_images_per_s(images: np.ndarray, cfg: TrainConfig, device: torch.device, folder: Path) -> float:
    """Best images/s of fit's epochs after the first (loader or device batches from the array, augmentation on)."""
    labels = np.arange(len(images)) % N_CLASSES
    batches = choose_batches(
        images, np.arange(len(images)), labels, batch_size=cfg.batch_size, shuffle=True, device=device, progress=False
    )
    seed_everything(cfg.seed)
    out_dir = folder / f"fit-{time.monotonic_ns()}"
    history = fit(ParticleCNN(N_CLASSES), batches, cfg=cfg, out_dir=out_dir, progress=False)
    return float(history.frame["images_per_s"].iloc[1:].max())


def tensor_images_per_s(
    size: int, batch_size: int, steps: int, device: torch.device, repeats: int, compile: bool = False
) -> float:
    """Best images/s over ``repeats`` loops of plain training steps on one float tensor already on the device."""
    seed_everything(0)
    cuda = device.type == "cuda"
    model = ParticleCNN(N_CLASSES).to(device).train()
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    step_model = torch.compile(model) if compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch_size * steps, 1, size, size, device=device) * 12 + 94
    x = x.contiguous(memory_format=memory_format)
    y = torch.arange(len(x), device=device) % N_CLASSES

    def step(i: int) -> None:
        """One forward/backward/update on the i-th slice."""
        sl = slice(i * batch_size, (i + 1) * batch_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(step_model(x[sl]).float(), y[sl])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(min(3, steps)):
        step(i)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        _sync(device)
        best = max(best, batch_size * steps / (time.perf_counter() - start))
    return best


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so the clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    """Print pipeline vs in-memory img/s and their ratio (and the CUDA extras)."""
    args = parse_args(argv)
    device = resolve_device(args.device)
    cfg = TrainConfig(device=str(device), epochs=1 + args.repeats, batch_size=args.batch_size, patience=0)
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{args.image_size} px, batch {args.batch_size}, {args.steps} steps")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        images = packed_array(folder, args.batch_size * args.steps, args.image_size)
        full = pipeline_images_per_s(images, cfg, device, folder)
        bare = tensor_images_per_s(args.image_size, args.batch_size, args.steps, device, args.repeats)
        print(f"pipeline (memmap -> batches -> augment -> step): {full:10.1f} img/s")
        print(f"in-memory float tensor -> step:                  {bare:10.1f} img/s")
        print(f"ratio pipeline / in-memory:                      {full / bare:10.3f}")
        if device.type == "cuda":
            cuda_extras(args, device, cfg, folder)


def cuda_extras(args: argparse.Namespace, device: torch.device, cfg: TrainConfig, folder: Path) -> None:
    """ResNet18 at 128 px, bf16 + channels_last: in-memory with compile off/on, and the full pipeline."""
    for compile in (False, True):
        rate = tensor_images_per_s(128, args.batch_size, args.steps, device, args.repeats, compile=compile)
        label = f"128 px bf16+channels_last in-memory, compile {'on ' if compile else 'off'}:"
        print(f"{label} {rate:10.1f} img/s (target >= 20000 on H100)")
    images = packed_array(folder, args.batch_size * args.steps, 128)
    for compile in (False, True):
        rate = pipeline_images_per_s(images, dataclasses.replace(cfg, compile=compile), device, folder)
        print(f"128 px full pipeline, compile {'on ' if compile else 'off'}:                {rate:10.1f} img/s")


if __name__ == "__main__":
    main()
