"""Parametric UMAP in torch (Sainburg et al. 2021): an MLP trained with UMAP's loss, so new points map in one pass.

``fit`` builds UMAP's fuzzy neighbour graph with umap-learn on the training embeddings, then trains the
encoder on edges sampled in proportion to their weights, each with ``negative_sample_rate`` negatives
drawn from the same batch (as umap-learn's parametric_umap.py does), under the cross-entropy between
graph and map memberships ``q = 1 / (1 + a d^(2b))``. ``transform`` is a batched forward pass: no
neighbour search, no optimisation, so 100k x 64 points take well under a second on one CPU core.
On a CPU a fit is deterministic for a given ``random_state``; CUDA's scatter-adds are not bit-exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import trange

from ..files import atomic_path
from ..frames import ArrayOrFrame, as_matrix, check_n_features, embedding_frame
from ..knn import ExactIndex
from ..nn.device import resolve_device
from ..numba_cache import umap_module

_METADATA_KEY = "icecore_parametric_umap"
_FORMAT_VERSION = 1
# umap-learn drops edges weaker than max_weight / n_epochs (never sampled in its 200-epoch default).
_WEIGHT_CUT_EPOCHS = 200
# Keeps log(d^2) finite for coincident points; the same role as umap-learn's 0.001 in its repulsion.
_DIST_EPS = 1e-3


class UMAPEncoder(nn.Module):
    """MLP from raw embeddings to the map; the input standardisation lives in its buffers and is saved with it."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 256), out_dim: int = 2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        dims = (in_dim, *hidden)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def set_standardisation(self, X: np.ndarray) -> None:
        """Store the training mean and std (constant columns get scale 1) used on every input."""
        std = X.std(axis=0)
        self.mean.copy_(torch.from_numpy(X.mean(axis=0)))
        self.scale.copy_(torch.from_numpy(np.where(std > 0, std, 1.0).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a batch of raw embeddings to the low-dimensional space."""
        return self.net((x - self.mean) / self.scale)


@dataclass(frozen=True)
class UMAPGraph:
    """UMAP's symmetric fuzzy neighbour graph as an edge list (head, tail, membership weight)."""

    head: np.ndarray
    tail: np.ndarray
    weight: np.ndarray


def umap_graph(X: np.ndarray, n_neighbors: int, metric: str = "euclidean", seed: int = 0) -> UMAPGraph:
    """The fuzzy simplicial set of ``X`` from umap-learn, on exact nearest neighbours."""
    knn_idx, knn_dist = ExactIndex(X, metric).neighbour_graph(n_neighbors)
    graph, _, _ = umap_module().umap_.fuzzy_simplicial_set(
        X, n_neighbors, np.random.RandomState(seed), metric, knn_indices=knn_idx, knn_dists=knn_dist
    )
    graph = graph.tocoo()
    graph.sum_duplicates()
    keep = graph.data >= graph.data.max() / _WEIGHT_CUT_EPOCHS
    return UMAPGraph(graph.row[keep].astype(np.int64), graph.col[keep].astype(np.int64), graph.data[keep])


def sample_edges(weight: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` edge indices drawn with replacement in proportion to ``weight`` (inverse CDF: no size limit)."""
    cdf = torch.cumsum(weight.double(), 0)
    u = torch.rand(n, generator=generator, dtype=torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, u).clamp_(max=len(weight) - 1)


def _log_w(u: torch.Tensor, v: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``log(a d^(2b))`` for paired rows: the map membership is ``q = sigmoid(-log_w)``."""
    d2 = (u - v).pow(2).sum(dim=1)
    return float(np.log(a)) + b * torch.log(d2 + _DIST_EPS)


def umap_loss(
    emb_to: torch.Tensor,
    emb_from: torch.Tensor,
    a: float,
    b: float,
    negative_sample_rate: int,
    generator: torch.Generator,
    repulsion_strength: float = 1.0,
) -> torch.Tensor:
    """UMAP cross-entropy of a batch of positive edges plus in-batch negatives (stable softplus form).

    Attraction is ``-log q = softplus(log_w)``, repulsion ``-log(1 - q) = softplus(-log_w)``.
    """
    neg_to = emb_to.repeat_interleave(negative_sample_rate, dim=0)
    perm = torch.randperm(len(neg_to), generator=generator).to(emb_from.device)
    neg_from = emb_from.repeat_interleave(negative_sample_rate, dim=0)[perm]
    attraction = F.softplus(_log_w(emb_to, emb_from, a, b))
    repulsion = F.softplus(-_log_w(neg_to, neg_from, a, b))
    return (attraction.sum() + repulsion_strength * repulsion.sum()) / (len(attraction) + len(repulsion))


class ParametricUMAP(TransformerMixin, BaseEstimator):
    """UMAP whose map is a torch MLP: fit once on a subsample, then transform any number of points fast."""

    def __init__(
        self,
        n_components: int = 2,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        spread: float = 1.0,
        metric: str = "euclidean",
        hidden: tuple[int, ...] = (256, 256),
        epochs: int = 30,
        edges_per_epoch: int | None = None,
        batch_size: int = 1024,
        negative_sample_rate: int = 5,
        repulsion_strength: float = 1.0,
        lr: float = 1e-2,
        random_state: int = 0,
        device: str = "auto",
        progress: bool = False,
    ) -> None:
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.min_dist = min_dist
        self.spread = spread
        self.metric = metric
        self.hidden = hidden
        self.epochs = epochs
        self.edges_per_epoch = edges_per_epoch
        self.batch_size = batch_size
        self.negative_sample_rate = negative_sample_rate
        self.repulsion_strength = repulsion_strength
        self.lr = lr
        self.random_state = random_state
        self.device = device
        self.progress = progress

    def fit(self, X: ArrayOrFrame, y: Any = None) -> ParametricUMAP:
        """Build UMAP's graph on ``X`` and train the encoder on it (``edges_per_epoch`` None = graph's edge count)."""
        values, _ = as_matrix(X)
        if values.shape[0] <= self.n_neighbors:
            raise ValueError(f"X has {values.shape[0]} rows; UMAP needs more than n_neighbors={self.n_neighbors}")
        if min(self.epochs, self.batch_size, self.negative_sample_rate) < 1:
            raise ValueError("epochs, batch_size and negative_sample_rate must be at least 1")
        graph = umap_graph(values, self.n_neighbors, self.metric, self.random_state)
        a, b = umap_module().umap_.find_ab_params(self.spread, self.min_dist)
        self.a_, self.b_ = float(a), float(b)
        self.n_features_in_ = values.shape[1]
        self.encoder_ = self._new_encoder()
        self.encoder_.set_standardisation(values)
        self.loss_history_ = self._train(values, graph)
        return self

    def _new_encoder(self) -> UMAPEncoder:
        """A freshly initialised encoder, seeded without touching the caller's global torch RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            return UMAPEncoder(self.n_features_in_, tuple(self.hidden), self.n_components)

    def _train(self, values: np.ndarray, graph: UMAPGraph) -> list[float]:
        """Adam, learning rate decaying linearly to 0, on the UMAP loss of weight-sampled edges; mean loss per epoch."""
        device = resolve_device(self.device)
        encoder = self.encoder_.to(device).train()
        x = torch.from_numpy(values).to(device)
        head, tail = torch.from_numpy(graph.head).to(device), torch.from_numpy(graph.tail).to(device)
        weight = torch.from_numpy(graph.weight)
        generator = torch.Generator().manual_seed(self.random_state)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=self.lr)
        n_edges = self.edges_per_epoch or len(weight)
        total_steps = self.epochs * -(-n_edges // self.batch_size)
        # Linear decay to zero, as umap-learn's own SGD does: late steps settle the map instead of shaking it.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
        history = []
        for _ in trange(self.epochs, desc="parametric UMAP", unit="epoch", disable=not self.progress):
            total = torch.zeros((), device=device)
            for batch in sample_edges(weight, n_edges, generator).to(device).split(self.batch_size):
                emb = encoder(torch.cat([x[head[batch]], x[tail[batch]]]))
                loss = umap_loss(
                    emb[: len(batch)], emb[len(batch) :], self.a_, self.b_,
                    self.negative_sample_rate, generator, self.repulsion_strength,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.detach() * len(batch)
            history.append(total.item() / n_edges)
        encoder.eval()
        return history

    @torch.inference_mode()
    def transform(self, X: ArrayOrFrame, batch_size: int | None = None) -> ArrayOrFrame:
        """Map points with the trained encoder (one pass, or chunks of ``batch_size`` to cap memory)."""
        check_is_fitted(self, "encoder_")
        values, index = as_matrix(X)
        check_n_features(values, self.n_features_in_)
        device = next(self.encoder_.parameters()).device
        x = torch.from_numpy(values)
        chunks = x.split(batch_size) if batch_size else (x,)
        Y = torch.cat([self.encoder_(chunk.to(device)).cpu() for chunk in chunks]).numpy()
        return embedding_frame(Y, index)

    def fit_transform(self, X: ArrayOrFrame, y: Any = None, **fit_params: Any) -> ArrayOrFrame:
        """Fit, then map the training points with the trained encoder."""
        return self.fit(X).transform(X)

    def save(self, path: Path | str) -> Path:
        """Write weights, standardisation and hyper-parameters (JSON in the header) to one safetensors file."""
        check_is_fitted(self, "encoder_")
        path = Path(path)
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params().items()}
        meta = {
            "format_version": _FORMAT_VERSION,
            "params": params,
            "n_features_in": self.n_features_in_,
            "a": self.a_,
            "b": self.b_,
            "loss_history": self.loss_history_,
        }
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.encoder_.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> ParametricUMAP:
        """Read a model written by :meth:`save` (safetensors: no code runs on load)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved parametric UMAP at {path}")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = (f.metadata() or {}).get(_METADATA_KEY)
            if header is None:
                raise ValueError(f"{path} is not a parametric UMAP file (no {_METADATA_KEY!r} metadata)")
            state = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header)
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: format version {meta.get('format_version')}, expected {_FORMAT_VERSION}")
        params = {**meta["params"], "hidden": tuple(meta["params"]["hidden"]), "device": device}
        model = cls(**params)
        model.n_features_in_ = int(meta["n_features_in"])
        model.a_, model.b_ = float(meta["a"]), float(meta["b"])
        model.loss_history_ = list(meta["loss_history"])
        model.encoder_ = model._new_encoder()
        model.encoder_.load_state_dict(state)
        model.encoder_.to(resolve_device(device)).eval()
        return model


__all__ = ["ParametricUMAP", "UMAPEncoder", "UMAPGraph", "sample_edges", "umap_graph", "umap_loss"]
