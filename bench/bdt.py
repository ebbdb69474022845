"""Benchmark: the BDT (XGBoost, the study's optimum) fitted on the CPU and on the GPU, in one run.

The feature table is ICELEARNING-sized by default (172k particles x the 34 FlowCam features, 7 classes):
each class a correlated Gaussian with skewed (log-normal) columns, overlapping as real classes do, so
the study's depth-14 trees grow deep. Both devices fit the same ``BDTClassifier`` (200 rounds, no early
stopping, so both do the same work) and predict a held-out fifth; the table gives fit and predict
seconds, held-out accuracy and the agreement of the two models' predictions, and the ratio CPU / GPU.

    python bench/bdt.py                      # 172k rows, CPU (every core) vs CUDA when present
    python bench/bdt.py --n 20000 --rounds 50
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

from icecore_lib.models.bdt import BDTClassifier
from icecore_lib.schema import FLOWCAM_FEATURES


def feature_table(n: int, n_classes: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Overlapping correlated Gaussian classes on the 34 feature names; half the columns log-normal."""
    rng = np.random.default_rng(seed)
    d = len(FLOWCAM_FEATURES)
    labels = rng.choice(n_classes, size=n, p=rng.dirichlet(np.full(n_classes, 3.0)))
    centers = rng.normal(scale=0.25, size=(n_classes, d))
    mixing = rng.normal(size=(n_classes, d, d)) / np.sqrt(d)
    X = centers[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n, d)), mixing[labels])
    X[:, ::2] = np.exp(X[:, ::2])
    return pd.DataFrame(X.astype(np.float32), columns=list(FLOWCAM_FEATURES)), labels


def timed_fit(device: str, X: pd.DataFrame, y: np.ndarray, X_test: pd.DataFrame, rounds: int) -> dict:
    """Fit and predict on ``device``; seconds, and the held-out predictions."""
    model = BDTClassifier(n_estimators=rounds, device=device, n_jobs=os.cpu_count())
    start = time.perf_counter()
    model.fit(X, y)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    predicted = model.predict(X_test)
    return {"fit_s": fit_s, "predict_s": time.perf_counter() - start, "predicted": predicted}


def main() -> None:
    """Fit on each available device and print the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=172_000, help="particles (a fifth held out)")
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    X, y = feature_table(args.n, args.classes, args.seed)
    cut = args.n * 4 // 5
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    results = {device: timed_fit(device, X[:cut], y[:cut], X[cut:], args.rounds) for device in devices}
    table = pd.DataFrame(
        {
            device: {
                "fit_s": r["fit_s"],
                "predict_s": r["predict_s"],
                "test_accuracy": float(np.mean(r["predicted"] == y[cut:])),
                "agreement_with_cpu": float(np.mean(r["predicted"] == results["cpu"]["predicted"])),
            }
            for device, r in results.items()
        }
    ).T
    print(f"{cut} training rows x {X.shape[1]} features, {args.classes} classes, {args.rounds} rounds, "
          f"depth 14, eta 0.296; CPU threads {os.cpu_count()}")
    with pd.option_context("display.float_format", "{:.3f}".format):
        print(table)
    if "cuda" in results:
        print(f"\nCPU / GPU: fit x{table.loc['cpu', 'fit_s'] / table.loc['cuda', 'fit_s']:.1f}, "
              f"predict x{table.loc['cpu', 'predict_s'] / table.loc['cuda', 'predict_s']:.1f}")


if __name__ == "__main__":
    main()
