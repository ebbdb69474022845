"""Time to accuracy: the image CNN and the autoencoder under the old and the new training schedule, in one run.

    python bench/time_to_accuracy.py                          # demo profile, both models, old vs new
    python bench/time_to_accuracy.py --models cnn --schedule short=epochs=4,low_res_fraction=0.5

Each schedule trains notebook 02's image CNN (and notebook 03's 64-d autoencoder) on the profile's synthetic data
with the profile's settings plus the schedule's overrides. "old" is the demo schedule before the speed issue
(12 CNN epochs at full size in fp32, no label smoothing, no progressive resizing); "new" is the profile as it stands.
Printed per schedule: wall minutes (training + predicting every particle), the best validation accuracy (CNN)
or loss (AE) reached by each minute of training, the test accuracy and balanced accuracy, and the speed-up
against the first schedule. Numbers measured on the synthetic twin.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from icecore_lib.config import AEConfig, CNNConfig, parse_override, stage_config
from icecore_lib.data.dataset import DatasetBundle, load_dataset
from icecore_lib.train.autoencoder import fit_autoencoder
from icecore_lib.train.classifier import evaluate_split, fit_torch_classifier

OLD = {"epochs": 12, "low_res_fraction": 0.0, "label_smoothing": 0.0, "precision": "fp32"}
SCHEDULES: dict[str, dict[str, Any]] = {"old": OLD, "new": {}}
MINUTES = (1, 2, 4, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--models", nargs="+", default=["cnn", "ae"], choices=["cnn", "ae"])
    parser.add_argument("--schedule", action="append", default=[], metavar="NAME=K=V,K=V",
                        help="an extra schedule: overrides of the profile (repeatable)")
    parser.add_argument("--only", nargs="+", default=None, help="schedule names to run (default: all)")
    return parser.parse_args(argv)


def extra_schedules(texts: list[str]) -> dict[str, dict[str, Any]]:
    """``name=k=v,k=v`` options as named override dicts."""
    schedules = {}
    for text in texts:
        name, _, rest = text.partition("=")
        schedules[name] = dict(parse_override(item) for item in rest.split(",") if item)
    return schedules


def curve(history: pd.DataFrame, column: str, best: str) -> dict[str, float]:
    """The best value of ``column`` reached within each of MINUTES of training (cumulative epoch seconds)."""
    elapsed = history["seconds"].cumsum() / 60
    pick = max if best == "max" else min
    return {f"{column}@{m}min": pick(history.loc[elapsed <= m, column], default=float("nan")) for m in MINUTES}


@cache
def _bundle(profile: str, image_size: int) -> DatasetBundle:
    """The profile's synthetic data packed at one image size (loaded once per size)."""
    return load_dataset(stage_config(CNNConfig, profile, image_size=image_size), progress=False)


def data_at(profile: str, overrides: dict[str, Any]) -> DatasetBundle:
    """The data a schedule trains on: at its own image_size when it sets one."""
    return _bundle(profile, overrides.get("image_size", stage_config(CNNConfig, profile).image_size))


def run_cnn(bundle: DatasetBundle, profile: str, overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train the image CNN under one schedule; its wall time, accuracy curve and test metrics."""
    cfg = stage_config(CNNConfig, profile, overrides=overrides)
    start = time.perf_counter()
    outputs = fit_torch_classifier(bundle, cfg, "image", folder, progress=False)
    wall = time.perf_counter() - start
    test = evaluate_split(outputs, bundle.train.table, "test")
    return {"epochs run": len(outputs.history), "wall min": wall / 60, **curve(outputs.history, "val_acc", "max"),
            "test accuracy": test["accuracy"], "test balanced accuracy": test["balanced_accuracy"]}


def run_ae(bundle: DatasetBundle, profile: str, overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Train the 64-d autoencoder under one schedule; its wall time and validation-loss curve."""
    cfg = stage_config(AEConfig, profile, overrides=overrides)
    start = time.perf_counter()
    _, outputs = fit_autoencoder(bundle, cfg, 64, folder, progress=False)
    wall = time.perf_counter() - start
    return {"epochs run": len(outputs.history), "wall min": wall / 60, **curve(outputs.history, "val_loss", "min"),
            "best val loss": outputs.history["val_loss"].min()}


def main(argv: list[str] | None = None) -> None:
    """Train every model under every schedule; print one table per model with speed-ups against the first."""
    args = parse_args(argv)
    schedules = {**SCHEDULES, **extra_schedules(args.schedule)}
    if args.only:
        schedules = {k: v for k, v in schedules.items() if k in args.only}
    runners = {"cnn": run_cnn, "ae": run_ae}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            rows = {}
            for name, overrides in schedules.items():
                bundle = data_at(args.profile, overrides)
                rows[name] = runners[model](bundle, args.profile, overrides, Path(tmp) / f"{model}-{name}")
                print(f"{model} {name} {overrides}: {rows[name]}", flush=True)
            table = pd.DataFrame(rows).T
            table["speed-up"] = table["wall min"].iloc[0] / table["wall min"]
            print(f"\n{model} ({args.profile} profile, synthetic twin, this machine)\n"
                  f"{table.to_string(float_format=lambda v: f'{v:.3f}')}\n", flush=True)


if __name__ == "__main__":
    main()
