"""The metadata MLP (the study's NN_META) and the building blocks the neural classifiers share.

Every torch model in icecore names the batch keys it reads in ``input_keys`` (see ``icecore_lib.nn.batches``
for the batch dict); the training loop calls ``model(*(batch[k] for k in model.input_keys))``.
Classifiers expose ``embed`` (the 40-unit penultimate activations) and ``predict_step`` (logits and
embedding from one pass).
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn

EMBED_DIM = 40


def dense_stack(widths: Sequence[int], dropout: float) -> nn.Sequential:
    """Linear -> BatchNorm -> ReLU -> Dropout for each consecutive pair of ``widths``."""
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(widths):
        layers += [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class EmbeddingClassifier(nn.Module, ABC):
    """A classifier whose logits are a linear read-out of ``embed``: subclasses define ``embed``."""

    input_keys: tuple[str, ...]
    classifier: nn.Linear

    @abstractmethod
    def embed(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The penultimate (``EMBED_DIM``-unit) activations."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Class logits."""
        return self.classifier(self.embed(*inputs))

    def predict_step(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the embedding they are read from, in one pass."""
        embedding = self.embed(*inputs)
        return self.classifier(embedding), embedding


class MetadataMLP(EmbeddingClassifier):
    """34 -> 128 -> 64 -> 32 -> 40 -> classes on scaled FlowCam features, BatchNorm/ReLU/dropout between."""

    input_keys = ("features",)

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: Sequence[int] = (128, 64, 32, EMBED_DIM),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.body = dense_stack((n_features, *hidden), dropout)
        self.classifier = nn.Linear(hidden[-1], n_classes)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The penultimate activations of a ``(B, n_features)`` batch."""
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"MetadataMLP expects features of shape (B, {self.n_features}), got {tuple(features.shape)}"
            )
        return self.body(features)
