"""Benchmark: umap-learn vs icecore's torch ParametricUMAP on synthetic clustered embeddings, in one run.

Both are fitted on the same subsample and then map every point; the table gives fit and transform
seconds, trustworthiness (on a subsample) and 2-D kNN accuracy, and the ratios umap-learn / parametric.
numba's JIT compilation is excluded: both methods first run once on a small warm-up set that takes
the same code paths (more than 4096 points, so NN-descent is compiled too).

    python bench/umap.py                    # 100k x 64, fit on 10k
    python bench/umap.py --n 20000 --fit-n 5000 --epochs 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icecore_lib.embed.compare import Timer, compare_embeddings
from icecore_lib.embed.umap import UMAPReducer
from icecore_lib.models.pumap import ParametricUMAP

# Run as a script, this file's folder heads sys.path and its name would shadow the umap-learn package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

WARMUP_POINTS = 4200  # above the 4096-point switch to approximate neighbours in both libraries


def clustered_points(
    n: int, dim: int, n_clusters: int, seed: int, separation: float = 0.5, noise: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of unequal size, each a Gaussian on its own random 6-D subspace plus noise; some overlap."""
    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_clusters, 2.0))
    labels = rng.choice(n_clusters, size=n, p=sizes)
    centers = rng.normal(scale=separation, size=(n_clusters, dim))
    bases = rng.normal(size=(n_clusters, 6, dim)) / np.sqrt(dim)
    latent = rng.normal(scale=2.0, size=(n, 6))
    X = centers[labels] + np.einsum("nk,nkd->nd", latent, bases[labels]) + rng.normal(scale=noise, size=(n, dim))
    return X.astype(np.float32), np.char.add("c", labels.astype(str))


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="points to map")
    p.add_argument("--dim", type=int, default=64, help="embedding width")
    p.add_argument("--fit-n", type=int, default=10_000, help="subsample both methods are fitted on")
    p.add_argument("--clusters", type=int, default=12)
    p.add_argument("--epochs", type=int, default=20, help="parametric UMAP epochs")
    p.add_argument("--n-neighbors", type=int, default=15)
    p.add_argument("--trust-n", type=int, default=2000, help="subsample for trustworthiness (O(n^2))")
    p.add_argument("--threads", type=int, default=1, help="torch threads (seeded umap-learn is single-threaded)")
    p.add_argument("--device", default="cpu", help="parametric UMAP's device: cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def run_method(model: UMAPReducer | ParametricUMAP, X_fit: np.ndarray, X_all: np.ndarray) -> tuple[np.ndarray, dict]:
    """Fit on the subsample, map every point; return the map and the two timings."""
    with Timer() as fit:
        model.fit(X_fit)
    with Timer() as transform:
        Y = model.transform(X_all)
    return Y, {"fit_s": fit.seconds, "transform_s": transform.seconds}


def main() -> None:
    """Warm up, time both methods, print the comparison table and the ratios."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    X, labels = clustered_points(args.n, args.dim, args.clusters, args.seed)
    fit_rows = np.random.default_rng(args.seed).choice(args.n, size=min(args.fit_n, args.n), replace=False)
    methods = {
        "umap-learn": lambda epochs: UMAPReducer(n_neighbors=args.n_neighbors, random_state=args.seed, n_epochs=epochs),
        "parametric (torch)": lambda epochs: ParametricUMAP(
            n_neighbors=args.n_neighbors, epochs=epochs, random_state=args.seed, device=args.device, progress=epochs > 1
        ),
    }
    X_warm, _ = clustered_points(WARMUP_POINTS, args.dim, args.clusters, args.seed + 1)
    for name, make in methods.items():
        run_method(make(30 if name == "umap-learn" else 1), X_warm, X_warm[:500])  # umap-learn maps with epochs/3
    maps, times = {}, {}
    for name, make in methods.items():
        print(f"fitting {name} on {len(fit_rows)} points, mapping {args.n} ...", flush=True)
        maps[name], times[name] = run_method(make(None if name == "umap-learn" else args.epochs), X[fit_rows], X)
    table = compare_embeddings(X, maps, labels, times, max_points=args.trust_n, seed=args.seed)
    print(f"\n{args.n} x {args.dim} points, {args.clusters} clusters; fit on {len(fit_rows)}; "
          f"parametric: {args.epochs} epochs on {args.device}; torch threads {args.threads}; JIT warm-up excluded")
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 120):
        print(table)
    ratio = table.loc["umap-learn"] / table.loc["parametric (torch)"]
    print(f"\numap-learn / parametric: fit x{ratio['fit_s']:.2f}, transform x{ratio['transform_s']:.1f}")


if __name__ == "__main__":
    main()
