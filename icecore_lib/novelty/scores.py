"""Novelty scores from a classifier's logits alone (higher = more novel): median probability, MSP, entropy, energy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.special import logsumexp, softmax

from ..frames import finite_values


def median_class_score(logits: np.ndarray) -> np.ndarray:
    """The study's score: median of a particle's class probabilities (high when no class stands out)."""
    return np.median(softmax(np.asarray(logits, dtype=np.float64), axis=1), axis=1)


def msp_score(logits: np.ndarray) -> np.ndarray:
    """One minus the maximum softmax probability (Hendrycks & Gimpel 2017), so higher = more novel."""
    return 1.0 - softmax(np.asarray(logits, dtype=np.float64), axis=1).max(axis=1)


def entropy_score(logits: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the softmax: the classifier's spread over the known classes."""
    logits = np.asarray(logits, dtype=np.float64)
    log_p = logits - logsumexp(logits, axis=1, keepdims=True)
    return -(np.exp(log_p) * log_p).sum(axis=1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Free energy -T logsumexp(logits / T) (Liu et al. 2020): low total evidence = more novel."""
    return -temperature * logsumexp(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


CLASSIFIER_SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "median": median_class_score,
    "msp": msp_score,
    "entropy": entropy_score,
    "energy": energy_score,
}


def classifier_scores(logits: pd.DataFrame) -> pd.DataFrame:
    """Every classifier-based score of a logits table (one column per class), same index.

    A model without logits (e.g. XGBoost) can pass log-probabilities: every score but ``energy`` (then 0) holds.
    """
    values = finite_values(logits, "logits")
    return pd.DataFrame({name: fn(values) for name, fn in CLASSIFIER_SCORES.items()}, index=logits.index)
