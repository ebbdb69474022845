"""From a packed part to torch batches: feature scaling, image statistics, two batch sources, augmentation.

Every batch is a dict of tensors already on the training device:

- ``"image"``: ``(B, 1, S, S)`` float32 raw intensities (0-255; the model normalises them with the
  image mean/std it stores in its buffers, so a saved model carries its own normalisation),
- ``"features"``: ``(B, F)`` float32 scaled metadata (see :class:`FeatureScaler`),
- ``"label"``: ``(B,)`` int64 class codes,
- ``"index"``: ``(B,)`` int64 row positions in the packed part (to map outputs back to ``particle_id``).

Keys appear only for the arrays given. Two sources yield them with the same interface
(``__iter__``, ``__len__``, ``set_epoch``, ``device``, ``indices``, ``shuffle``):
:class:`DeviceBatches` (the selected uint8 rows moved to the device once, batches sliced there) and
:class:`LoaderBatches` (a DataLoader slicing the memory-mapped array one fancy-index per batch).
Both shuffle with a permutation drawn from ``(seed, epoch)``, so an epoch's order does not depend on
what ran before it (a resumed run sees the same batches) nor on which source feeds it. Under data
parallelism each process iterates ``source.shard(rank, world)``: its :class:`Shard` of every epoch.
"""

from __future__ import annotations

import math

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from . import schema
from .sources import BACKGROUND_GRAY

# The reference study's gray-level normalisation (ICELEARNING): used until training images give their own.
STUDY_IMAGE_MEAN = 94.0
STUDY_IMAGE_STD = 12.0
# The background gray a flat-fielded crop is scaled to (the instrument's usual brightfield background).
FLAT_FIELD_GRAY = float(BACKGROUND_GRAY)

Batch = dict[str, torch.Tensor]
Order = TypeVar("Order", np.ndarray, torch.Tensor)


class ImageNorm(nn.Module):
    """Raw 0-255 intensities -> standardised floats, with the training mean/std kept as buffers (saved with a model).

    ``flat_field``: first divide each crop by its own background (the median of its 2-px border) and scale it
    to the instrument's usual background gray. Sessions differ in illumination; the ice core is imaged in
    other sessions than the reference set, with a darker background: the session probe of notebook 02 tells
    the sessions apart from background and blur statistics alone.
    """

    def __init__(self, mean: float = STUDY_IMAGE_MEAN, std: float = STUDY_IMAGE_STD, flat_field: bool = False) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"image std must be positive, got {std}")
        self.flat_field = flat_field
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Standardise a batch of raw ``(B, C, S, S)`` images (uint8 or float), flat-fielded first when asked."""
        x = images.float()
        if self.flat_field:
            x = x * (FLAT_FIELD_GRAY / border_median(x).clamp_min(1.0))
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back to raw intensities (flat-fielded ones when ``flat_field``), clipped to 0-255."""
        return (x.float() * self.std + self.mean).clamp(0, 255)


def border_median(images: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Each crop's background: the median of its ``width``-px border, shape ``(B, C, 1, 1)``."""
    w = width
    ring = torch.cat(
        [images[..., :w, :].flatten(-2), images[..., -w:, :].flatten(-2),
         images[..., w:-w, :w].flatten(-2), images[..., w:-w, -w:].flatten(-2)],
        dim=-1,
    )
    return ring.median(dim=-1).values[..., None, None]


class FeatureScaler(TransformerMixin, BaseEstimator):
    """Scale FlowCam features for neural nets: log1p on non-negative right-skewed columns, then standardise.

    FlowCam areas, volumes and intensities span orders of magnitude; a plain z-score would leave a few
    particles at +50 sigma. ``fit`` uses only the rows whose ``split`` is ``"train"`` when the table has a
    ``split`` column, so validation, test and core rows never leak into the scaling.
    """

    def __init__(self, columns: Sequence[str] = schema.FLOWCAM_FEATURES, skew_threshold: float = 1.0) -> None:
        self.columns = columns
        self.skew_threshold = skew_threshold

    def fit(self, table: pd.DataFrame, y: Any = None) -> FeatureScaler:
        """Choose the log columns and learn mean/std on the training rows."""
        rows = _training_rows(table)
        values = self._values(rows)
        self.log_ = (values.min(axis=0) >= 0) & (_skewness(values) > self.skew_threshold)
        logged = self._log(values)
        self.mean_ = logged.mean(axis=0)
        std = logged.std(axis=0)
        self.std_ = np.where(std > 0, std, 1.0)
        return self

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """Scaled ``(N, F)`` float32 features in the table's row order."""
        check_is_fitted(self)
        return ((self._log(self._values(table)) - self.mean_) / self.std_).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON-able values (for a checkpoint's metadata)."""
        check_is_fitted(self)
        return {
            "columns": list(self.columns),
            "skew_threshold": self.skew_threshold,
            "log": self.log_.tolist(),
            "mean": self.mean_.tolist(),
            "std": self.std_.tolist(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureScaler:
        """Rebuild a fitted scaler from :meth:`state_dict`."""
        scaler = cls(state["columns"], state["skew_threshold"])
        scaler.log_ = np.asarray(state["log"], dtype=bool)
        scaler.mean_ = np.asarray(state["mean"], dtype=np.float64)
        scaler.std_ = np.asarray(state["std"], dtype=np.float64)
        return scaler

    def _values(self, table: pd.DataFrame) -> np.ndarray:
        """The feature columns as float64, with errors naming a missing column or a non-finite cell."""
        columns = list(self.columns)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise KeyError(f"feature table lacks column(s) {missing}")
        values = table[columns].to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(
                f"feature column {columns[col]!r} is not finite at particle {table.index[row]!r} "
                f"({int(bad[:, col].sum())} bad row(s) in that column)"
            )
        return values

    def _log(self, values: np.ndarray) -> np.ndarray:
        """log1p on the log columns (negative values, unseen in training, clip to 0 first)."""
        out = values.copy()
        out[:, self.log_] = np.log1p(np.clip(values[:, self.log_], 0, None))
        return out


def _training_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of the training split (all rows when the table has no split column)."""
    if schema.SPLIT not in table.columns:
        return table
    rows = table[table[schema.SPLIT] == "train"]
    if rows.empty:
        raise ValueError(f"no rows with {schema.SPLIT} == 'train' to fit on")
    return rows


def _skewness(values: np.ndarray) -> np.ndarray:
    """Per-column sample skewness (0 for constant columns)."""
    centred = values - values.mean(axis=0)
    std = centred.std(axis=0)
    third = (centred**3).mean(axis=0)
    return np.divide(third, std**3, out=np.zeros_like(std), where=std > 0)


def image_stats(
    images: np.ndarray,
    indices: np.ndarray | None = None,
    *,
    max_images: int = 20000,
    seed: int = 0,
    chunk: int = 4096,
    progress: bool = True,
) -> tuple[float, float]:
    """Gray mean and std of (a seeded sample of at most ``max_images`` of) the training images."""
    rows = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("image_stats needs at least one image")
    if rows.size > max_images:
        rows = np.random.default_rng(seed).choice(rows, max_images, replace=False)
    rows = np.sort(rows)
    total = total_sq = 0.0
    for start in tqdm(range(0, rows.size, chunk), desc="image stats", disable=not progress, leave=False):
        block = images[rows[start : start + chunk]].astype(np.float64)
        total += block.sum()
        total_sq += np.square(block).sum()
    count = rows.size * images[0].size
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean**2, 1e-12)))


def epoch_permutation(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The order of ``n`` samples in an epoch: a permutation drawn from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator)


@dataclass(frozen=True)
class Shard:
    """One process's share of every epoch under data parallelism (the default, rank 0 of 1, is everything).

    Rank ``r`` takes every ``world``-th position of the epoch's order starting at ``r``, in batches of
    ``batch_size // world``; so batch ``k`` of all ranks together is exactly batch ``k`` of the unsharded
    source, and gradients averaged over the ranks are those of one process with the whole batch.
    ``even`` first drops the epoch's last ``n % world`` positions (other samples each shuffled epoch) so
    every rank runs as many equal batches, as the collectives of a training step need; without it
    (evaluation) every sample is kept and ranks may differ by one batch.
    """

    rank: int = 0
    world: int = 1
    even: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in 0..{self.world - 1} for a world of {self.world}, got {self.rank}")

    def batch_size(self, global_batch_size: int) -> int:
        """This rank's batch size: the global batch split evenly over the ranks."""
        if global_batch_size < 1 or global_batch_size % self.world:
            raise ValueError(
                f"batch_size {global_batch_size} must be a positive multiple of the world size {self.world}: "
                "it is the global batch, split evenly over the processes"
            )
        return global_batch_size // self.world

    def take(self, order: Order) -> Order:
        """This rank's positions of an epoch's order."""
        end = len(order) - (len(order) % self.world if self.even else 0)
        return order[self.rank : end : self.world]

    def n_batches(self, n: int, global_batch_size: int, drop_last: bool) -> int:
        """This rank's batches per epoch of ``n`` samples."""
        end = n - (n % self.world if self.even else 0)
        return _n_batches(len(range(self.rank, end, self.world)), self.batch_size(global_batch_size), drop_last)

    def batches(self, order: Order, global_batch_size: int, drop_last: bool) -> Iterator[Order]:
        """This rank's batches of an epoch's order."""
        mine, size = self.take(order), self.batch_size(global_batch_size)
        for b in range(_n_batches(len(mine), size, drop_last)):
            yield mine[b * size : (b + 1) * size]


class PackedImageDataset(Dataset):
    """Rows ``indices`` of a packed ``(N, S, S)`` uint8 array; an item or a whole batch of rows per call.

    ``labels`` and ``features`` are aligned with ``images`` row by row (length N). Indexing with a
    sequence of positions reads all their rows with one fancy index (sorted reads from a memmap are
    sequential), so the DataLoader should hand it whole batches: see :func:`make_loader`.
    Images stay uint8 here; conversion happens on the batch, on the device.
    """

    def __init__(
        self,
        images: np.ndarray | None,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        features: np.ndarray | None = None,
    ) -> None:
        self.indices = _check_indices(indices, _part_length(images, labels, features))
        self.images = images
        self.labels, self.features = _as_arrays(labels, features)

    def __len__(self) -> int:
        """Number of selected rows."""
        return len(self.indices)

    def __getitem__(self, position: int | Sequence[int] | np.ndarray) -> Batch:
        """The rows at ``position`` (one int, or a batch of positions) as CPU tensors."""
        rows = self.indices[position]
        item: Batch = {"index": torch.as_tensor(rows)}
        if self.images is not None:
            item["image"] = torch.from_numpy(np.asarray(self.images[rows])).unsqueeze(-3)
        if self.features is not None:
            item["features"] = torch.as_tensor(self.features[rows])
        if self.labels is not None:
            item["label"] = torch.as_tensor(self.labels[rows])
        return item


def _part_length(images: np.ndarray | None, labels: np.ndarray | None, features: np.ndarray | None) -> int:
    """The packed part's row count; fails when the arrays given disagree on it."""
    given = {"images": images, "labels": labels, "features": features}
    lengths = {name: len(a) for name, a in given.items() if a is not None}
    if not lengths:
        raise ValueError("give at least one of images, labels, features")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"images, labels and features must have one row per particle; got lengths {lengths}")
    if images is not None and (images.ndim != 3 or images.dtype != np.uint8):
        raise ValueError(f"images must be an (N, S, S) uint8 array, got {images.dtype} {images.shape}")
    return next(iter(lengths.values()))


def _as_arrays(labels: Any, features: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Labels as int64 and features as float32 numpy arrays (pandas objects lose their index here)."""
    labels = None if labels is None else np.asarray(labels, dtype=np.int64)
    features = None if features is None else np.asarray(features, dtype=np.float32)
    return labels, features


def _check_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """Row positions as a private int64 copy, each within the part and used once."""
    indices = np.array(indices, dtype=np.int64)
    if indices.ndim != 1 or indices.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D array of row positions, got shape {indices.shape}")
    if indices.min() < 0 or indices.max() >= n:
        raise IndexError(f"indices out of range for a part of {n} rows: min {indices.min()}, max {indices.max()}")
    if np.unique(indices).size != indices.size:
        raise ValueError("indices must not repeat a row (each particle once per epoch)")
    return indices


class SortedBatchSampler(Sampler[np.ndarray]):
    """Batches of dataset positions: the epoch's permutation cut into batches, each sorted, so a batch reads the
    memmap front to back when the dataset's indices are sorted (as split selections are). ``share``: the
    process's :class:`Shard` of each epoch (default: all of it)."""

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False,
        share: Shard = Shard(),
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        share.batch_size(batch_size)
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.share = share
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.share.n_batches(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Position batches; sorted inside a batch only when shuffled (unshuffled keeps the given order)."""
        order = epoch_permutation(self.n, self.seed, self.epoch, self.shuffle).numpy()
        for batch in self.share.batches(order, self.batch_size, self.drop_last):
            yield np.sort(batch) if self.shuffle else batch


def _n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch for ``n`` samples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a CPU batch to ``device``; images travel as uint8 and become float32 there."""
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if "image" in moved:
        moved["image"] = moved["image"].float()
    return moved


class LoaderBatches:
    """The CPU path: a DataLoader reading one fancy-indexed slice of the packed array per batch."""

    def __init__(
        self, dataset: PackedImageDataset, sampler: SortedBatchSampler, loader: DataLoader, device: torch.device
    ) -> None:
        self.dataset, self.sampler, self.loader, self.device = dataset, sampler, loader, device

    @property
    def indices(self) -> np.ndarray:
        """The part's row positions this source covers, in unshuffled order."""
        return self.dataset.indices

    @property
    def shuffle(self) -> bool:
        """Whether each epoch is a fresh permutation."""
        return self.sampler.shuffle

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses."""
        self.sampler.set_epoch(epoch)

    def shard(self, rank: int, world: int, *, even: bool = False) -> LoaderBatches:
        """The same batches cut to one process's :class:`Shard` (a new source; this one is unchanged)."""
        s = self.sampler
        sampler = SortedBatchSampler(s.n, s.batch_size, shuffle=s.shuffle, seed=s.seed, drop_last=s.drop_last,
                                     share=Shard(rank, world, even))
        sampler.set_epoch(s.epoch)
        loader = _data_loader(self.dataset, sampler, self.loader.num_workers, self.device)
        return LoaderBatches(self.dataset, sampler, loader, self.device)

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        """Batches on the device."""
        for batch in self.loader:
            yield _to_device(batch, self.device)


def make_loader(
    images: np.ndarray | None,
    indices: np.ndarray,
    labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> LoaderBatches:
    """Batches from the packed array through a DataLoader (workers read whole batches; pinned for CUDA)."""
    device = torch.device(device)
    dataset = PackedImageDataset(images, indices, labels, features)
    sampler = SortedBatchSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return LoaderBatches(dataset, sampler, _data_loader(dataset, sampler, num_workers, device), device)


def _data_loader(
    dataset: PackedImageDataset, sampler: SortedBatchSampler, num_workers: int, device: torch.device
) -> DataLoader:
    """A DataLoader handing whole sampler batches to ``num_workers`` workers (pinned memory for CUDA)."""
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(sampler.seed),
    )


class DeviceBatches:
    """The GPU path: the selected rows moved to the device once (uint8), batches sliced and converted there."""

    def __init__(
        self,
        images: np.ndarray | None,
        indices: np.ndarray,
        labels: np.ndarray | None = None,
        features: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        chunk: int = 8192,
        progress: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.indices = _check_indices(indices, _part_length(images, labels, features))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.share = Shard()
        self.epoch = 0
        labels, features = _as_arrays(labels, features)
        self.tensors: Batch = {"index": torch.from_numpy(self.indices).to(self.device)}
        if images is not None:
            self.tensors["image"] = _upload_images(images, self.indices, self.device, chunk, progress)
        if features is not None:
            self.tensors["features"] = torch.from_numpy(features[self.indices]).to(self.device)
        if labels is not None:
            self.tensors["label"] = torch.from_numpy(labels[self.indices]).to(self.device)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration uses."""
        self.epoch = epoch

    def shard(self, rank: int, world: int, *, even: bool = False) -> DeviceBatches:
        """The same batches cut to one process's :class:`Shard` (a new source sharing the device tensors)."""
        share = Shard(rank, world, even)
        share.batch_size(self.batch_size)
        sharded = copy.copy(self)
        sharded.share = share
        return sharded

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.share.n_batches(len(self.indices), self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        """Batches of the epoch's permutation; images become float32 on the device."""
        order = epoch_permutation(len(self.indices), self.seed, self.epoch, self.shuffle).to(self.device)
        for take in self.share.batches(order, self.batch_size, self.drop_last):
            batch = {k: v[take] for k, v in self.tensors.items()}
            if "image" in batch:
                batch["image"] = batch["image"].float()
            yield batch


def _upload_images(
    images: np.ndarray, rows: np.ndarray, device: torch.device, chunk: int, progress: bool
) -> torch.Tensor:
    """Copy the selected rows to one ``(n, 1, S, S)`` uint8 tensor on ``device``, a chunk at a time."""
    size = images.shape[1:]
    out = torch.empty((len(rows), 1, *size), dtype=torch.uint8, device=device)
    for start in tqdm(range(0, len(rows), chunk), desc=f"images -> {device}", disable=not progress, leave=False):
        block = np.asarray(images[rows[start : start + chunk]])
        out[start : start + len(block), 0] = torch.from_numpy(block).to(device, non_blocking=False)
    return out


def choose_batches(
    images: np.ndarray | None,
    indices: np.ndarray,
    labels: np.ndarray | None = None,
    features: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    memory_fraction: float = 0.5,
    progress: bool = True,
) -> DeviceBatches | LoaderBatches:
    """Device-resident batches on CUDA when the rows fit in ``memory_fraction`` of free GPU memory (or when
    there are no images: features alone are small), else the DataLoader path."""
    device = torch.device(device)
    common = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, device=device)
    if images is None or (device.type == "cuda" and _fits_on_device(images, len(indices), device, memory_fraction)):
        return DeviceBatches(images, indices, labels, features, progress=progress, **common)
    return make_loader(images, indices, labels, features, num_workers=num_workers, **common)


def _fits_on_device(images: np.ndarray, n_rows: int, device: torch.device, memory_fraction: float) -> bool:
    """Whether ``n_rows`` uint8 images fit in a fraction of the device's free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    return n_rows * images[0].nbytes <= memory_fraction * free


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    flips: bool = True,
    rotations: bool = True,
    jitter: float = 0.1,
    blur: float = 0.0,
    noise: float = 0.0,
) -> torch.Tensor:
    """Randomly flip, rotate by multiples of 90 degrees (particles have no up), jitter brightness/contrast,
    defocus and add sensor noise.

    ``x`` is a ``(B, ..., S, S)`` batch of raw intensities (0-255, float or uint8) on the generator's
    device; each sample draws its own transform. Brightness is a gain and contrast a stretch about the
    image mean, each in ``[1 - jitter, 1 + jitter]``. ``blur``: largest Gaussian defocus sigma (px), each sample
    drawing one in ``[0, blur]``; ``noise``: largest Gaussian noise std (gray levels), likewise. Focus and
    noise differ between acquisition sessions, so these keep a model from reading the session. Results clip
    to 0-255; shape and dtype are kept.
    """
    if x.device.type != generator.device.type:
        raise ValueError(f"augment: batch on {x.device} but generator on {generator.device}")
    n = x.shape[0]
    per_sample = (n,) + (1,) * (x.ndim - 1)
    out = x
    if flips:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        out = torch.where(flip.view(per_sample), out.flip(-1), out)
    if rotations:
        out = _rotate90(out, torch.randint(0, 4, (n,), generator=generator, device=x.device))
    if jitter > 0:
        uniform = torch.rand((2, *per_sample), generator=generator, device=x.device)
        gain, stretch = (1 + jitter * (2 * uniform - 1)).unbind(0)
        values = out.float()
        mean = values.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        values = ((values - mean) * stretch + mean) * gain
        out = values.clamp(0, 255)
    if blur > 0:
        sigma = blur * torch.rand(n, generator=generator, device=x.device)
        out = _gaussian_blur(out.float(), sigma)
    if noise > 0:
        std = noise * torch.rand(per_sample, generator=generator, device=x.device)
        out = (out.float() + std * torch.randn(out.shape, generator=generator, device=x.device)).clamp(0, 255)
    out = out if x.is_floating_point() else out.float().round()
    return out.to(x.dtype)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample of ``(B, ..., S, S)`` with its own Gaussian sigma (separable, reflect-padded)."""
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weights = torch.exp(-0.5 * (offsets / sigma.clamp(min=1e-3).view(-1, 1)) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)
    shape = x.shape
    planes = x.reshape(1, -1, shape[-2], shape[-1])
    kernel = weights.repeat_interleave(planes.shape[1] // shape[0], dim=0)
    planes = F.pad(planes, (radius, radius, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernel.view(-1, 1, 1, 2 * radius + 1), groups=planes.shape[1])
    planes = F.conv2d(planes, kernel.view(-1, 1, 2 * radius + 1, 1), groups=planes.shape[1])
    return planes.reshape(shape)


def _rotate90(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each sample by its own number of quarter turns, without a host sync (square images only)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"90-degree rotations need square images, got {tuple(x.shape[-2:])}")
    per_sample = (x.shape[0],) + (1,) * (x.ndim - 1)
    # rot90 by k = optional transpose, then flips: k=1 transpose+flip rows, k=2 flip both, k=3 transpose+flip cols.
    k = quarter_turns.view(per_sample)
    out = torch.where(k % 2 == 1, x.transpose(-2, -1), x)
    out = torch.where((k == 1) | (k == 2), out.flip(-2), out)
    return torch.where((k == 2) | (k == 3), out.flip(-1), out)


__all__ = [
    "STUDY_IMAGE_MEAN",
    "STUDY_IMAGE_STD",
    "Batch",
    "DeviceBatches",
    "FeatureScaler",
    "ImageNorm",
    "LoaderBatches",
    "PackedImageDataset",
    "Shard",
    "SortedBatchSampler",
    "augment",
    "choose_batches",
    "epoch_permutation",
    "image_stats",
    "make_loader",
]
