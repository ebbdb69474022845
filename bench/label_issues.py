"""Benchmark: how many labels flipped on purpose cleanlab finds in the reference set, in one run.

The profile's synthetic reference set (generated and packed once, cached) gets 1%, 3% and 5% of its labels moved
to another class at random; notebook 01's BDT (the profile's settings, no early stopping: the fitted rounds) gives
out-of-fold probabilities (``cv_folds`` folds) and cleanlab ranks the label issues. Printed per fraction: the
flipped count, how many cleanlab flags in all, and the share of the flipped ones in its top 2x flipped count.
Measured on the synthetic twin: labellers' real mistakes are between look-alikes, harder than random flips.

    python bench/label_issues.py                 # demo profile
    python bench/label_issues.py --profile ci
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from icecore_lib.config import MetadataConfig, stage_config
from icecore_lib.data.dataset import load_dataset
from icecore_lib.label_issues import out_of_fold_proba, rank_label_issues, recall_in_top
from icecore_lib.models.bdt import BDTClassifier
from icecore_lib.schema import LABEL, feature_set


def main() -> None:
    """Flip, predict out of fold, rank; print one line per flipped fraction."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    args = parser.parse_args()
    cfg = stage_config(MetadataConfig, args.profile)
    table = load_dataset(cfg).train.table
    features = list(feature_set(cfg.metadata_features))
    classes = sorted(table[LABEL].unique())
    model = BDTClassifier(eta=cfg.eta, max_depth=cfg.max_depth, n_estimators=cfg.n_estimators, features=features,
                          seed=cfg.seed)
    print(f"{len(table):,} labelled particles, {len(classes)} classes, BDT {cfg.n_estimators} rounds depth "
          f"{cfg.max_depth}, {cfg.cv_folds}-fold out-of-fold probabilities")
    for fraction in args.fractions:
        rng = np.random.default_rng(int(fraction * 1000))
        flipped = list(rng.choice(table.index, int(round(fraction * len(table))), replace=False))
        noisy = table[LABEL].copy()
        for pid in flipped:
            noisy[pid] = rng.choice([c for c in classes if c != noisy[pid]])
        start = time.perf_counter()
        proba = out_of_fold_proba(model, table[features], noisy, classes, folds=cfg.cv_folds, seed=cfg.seed)
        issues = rank_label_issues(noisy, proba)
        print(f"flipped {fraction:.0%} ({len(flipped):,}): cleanlab flags {len(issues):,}; recall of the flipped in "
              f"its top {2 * len(flipped):,}: {recall_in_top(issues, flipped):.3f} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
