"""Benchmark: classification and discovery across the lab -> core shift's severity, in one run.

For each severity (``SynthConfig.shift_severity``: 0 = none, 1 = the demo's, 2 = twice as far) and data seed, a
synthetic dataset of a small size (its own manifest entry, cached like any other) goes through every notebook with
the demo profile's methods (``icecore run``, minus what the sweep does not read: the image-only CNN variant and the
BDT search), and its metrics.json gives one row: core accuracy, composition error (CC/ACC/EM), the planted class's
AUROC and recall in the top 2n for every novelty score and the combined rank, the share of the core flagged
unknown, and notebook 04's flagged clusters with how many are mostly the planted class. Printed: one table per
severity (the mean over seeds) and every run's row; written: ``sweep.csv`` beside the runs. Measured on the
synthetic twin: the severity scales only what the generator models (session light, focus, noise).

With ``--rescore`` an earlier sweep's runs are copied (into this sweep's own folder) and only notebooks 04-05 run
again, with this checkout's discovery and the same data and trained models: two discovery methods compared on equal
footing, in minutes per point.

    python bench/shift_sweep.py                                   # 5 severities x 2 seeds (about 90 min on 2 cores)
    python bench/shift_sweep.py --severities 1 2 --seeds 1        # a quick look
    python bench/shift_sweep.py --rescore ~/.cache/icecore/shift-sweep/<earlier>   # today's discovery, same models
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from icecore_lib.config import default_cache_dir
from icecore_lib.files import atomic_write_json, atomic_write_yaml
from icecore_lib.run.pipeline import RunInterrupted, resume_run, run_notebooks
from icecore_lib.schema import NEW_CLASS

REPO = Path(__file__).resolve().parents[1]
# What the sweep does not read, left out to keep a point at minutes: the image-only variant, the BDT search.
SPEED = {"variants": ["both"], "search_iterations": 0}
# What a rescore runs again: the discovery notebooks (their metrics sections and notebook names).
RESCORED = {"04_umap": "04_umap_clustering", "05_discovery": "05_outlier_gallery"}


def dataset_entry(severity: float, seed: int, args: argparse.Namespace, parts: dict[str, Any]) -> dict[str, Any]:
    """The manifest entry of one sweep point's synthetic dataset (the demo entry's parts, other sizes and shift)."""
    overrides = {"shift_severity": severity, "n_train_per_class": args.train_per_class, "n_core": args.core,
                 "n_core_samples": args.samples, "diatom_fraction": args.diatom_fraction}
    return {"description": f"shift sweep: severity {severity}, seed {seed}",
            "synthetic": {"profile": "demo", "seed": seed, "overrides": overrides}, "parts": parts}


def write_manifest(points: list[tuple[float, int]], args: argparse.Namespace, folder: Path) -> Path:
    """One manifest holding every sweep point's dataset, with the project manifest's classes and synthetic parts."""
    project = yaml.safe_load((REPO / "data_manifest.yaml").read_text())
    parts = project["datasets"]["synthetic-demo"]["parts"]
    datasets = {point_name(s, seed): dataset_entry(s, seed, args, parts) for s, seed in points}
    path = folder / "sweep_manifest.yaml"
    path.write_text(yaml.safe_dump({"classes": project["classes"], "datasets": datasets}, sort_keys=False))
    return path


def point_name(severity: float, seed: int) -> str:
    """A sweep point's dataset and run name."""
    return f"shift{severity:g}-seed{seed}"


def row(metrics: dict[str, Any]) -> dict[str, Any]:
    """One run's numbers: classification, composition, novelty per score, flagged share, flagged clusters."""
    cnn, discovery = metrics.get("02_cnn", {}), metrics.get("05_discovery", {})
    composition = cnn.get("composition_mae", {})
    out = {"core_accuracy": cnn.get("core_accuracy", {}).get("core"),
           "cc_error": composition.get("cc_abs_error"), "acc_error": composition.get("acc_abs_error"),
           "em_error": composition.get("em_abs_error"),
           "flagged_fraction": discovery.get("core_flagged_unknown_fraction"),
           "combined_scores": "+".join(discovery.get("combined_rank_scores", [])),
           "ranking_trusted": discovery.get("shift_check", {}).get("trusted"),
           "max_rank_shift": discovery.get("shift_check", {}).get("max_abs_rank_shift")}
    for score, values in discovery.get("new_class", {}).items():
        out[f"{score}.auroc"] = values.get("auroc")
        out[f"{score}.recall@2n"] = values.get("recall@2n")
    flagged = metrics.get("04_umap", {}).get("core_clusters", {}).get("flagged", [])
    out["clusters_flagged"] = len(flagged)
    out["clusters_planted"] = sum(c.get("dominant_truth") == NEW_CLASS for c in flagged)
    return out


def run_point(severity: float, seed: int, manifest: Path, runs_root: Path, overrides: dict[str, Any]) -> dict:
    """Every notebook on one sweep point's dataset; its row (with the error when a notebook failed)."""
    name = point_name(severity, seed)
    return timed_row(severity, seed, lambda: run_notebooks(
        "demo", dataset=name, name=name, runs_root=runs_root,
        overrides={**SPEED, **overrides, "manifest": str(manifest)}, progress=False)[0])


def finished_points(sweep: Path) -> list[tuple[float, int]]:
    """The (severity, seed) of every point of a sweep folder whose notebooks all finished (a sweep still running
    included), in severity then seed order."""
    points = []
    for metrics in sweep.glob("shift*-seed*/metrics.json"):
        match = re.fullmatch(r"shift([0-9.]+)-seed([0-9]+)", metrics.parent.name)
        if match and "05_discovery" in json.loads(metrics.read_text()):
            points.append((float(match[1]), int(match[2])))
    if not points:
        raise FileNotFoundError(f"{sweep} holds no finished sweep point (shift<severity>-seed<seed>/metrics.json)")
    return sorted(points)


def rescore_point(severity: float, seed: int, source: Path, runs_root: Path, overrides: dict[str, Any]) -> dict:
    """A copy of an earlier sweep's point with notebooks 04-05 run again by this checkout; its row."""
    name = point_name(severity, seed)
    target = runs_root / name
    shutil.copytree(source / name, target)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["parameters"]["run_dir"] = str(target)
    params["parameters"]["overrides"] = {**params["parameters"]["overrides"], **overrides}
    params["notebooks_dir"] = str(REPO / "notebooks")
    atomic_write_yaml(target / "params.yaml", params)
    metrics = {k: v for k, v in json.loads((target / "metrics.json").read_text()).items() if k not in RESCORED}
    pipeline = metrics.get("pipeline", {})
    pipeline["notebook_seconds"] = {k: v for k, v in pipeline.get("notebook_seconds", {}).items()
                                    if k not in RESCORED.values()}
    atomic_write_json(target / "metrics.json", metrics)
    return timed_row(severity, seed, lambda: resume_run(target, progress=False)[0])


def timed_row(severity: float, seed: int, execute: Callable[[], Path]) -> dict:
    """Run a sweep point (``execute`` returns its run folder) and give its row, with the error when a notebook failed."""
    started = time.perf_counter()
    try:
        run_dir, error = execute(), ""
    except RunInterrupted as stop:
        run_dir, error = stop.run_dir, str(stop).splitlines()[0]
    metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    minutes = (time.perf_counter() - started) / 60
    print(f"{point_name(severity, seed)}: {minutes:.1f} min{' FAILED: ' + error if error else ''}", flush=True)
    return {"severity": severity, "seed": seed, "minutes": round(minutes, 1), **row(metrics), "error": error}


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per severity, the mean over seeds of the headline numbers."""
    columns = ["core_accuracy", "cc_error", "acc_error", "em_error", "combined_rank.auroc", "combined_rank.recall@2n",
               "flagged_fraction", "max_rank_shift", "clusters_flagged", "clusters_planted"]
    present = [c for c in columns if c in table]
    return table.groupby("severity")[present].mean().round(3)


def markdown(table: pd.DataFrame) -> str:
    """A table as GitHub markdown (the README's format), its index as the first column."""
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i), *("" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v)
                                           for v in values)]) + " |" for i, values in zip(table.index, table.to_numpy())]
    return "\n".join(lines)


def main() -> None:
    """Run every sweep point, print the tables, write sweep.csv."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--severities", type=float, nargs="+", default=[0.0, 0.5, 1.0, 1.5, 2.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--core", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--diatom-fraction", type=float, default=0.01)
    parser.add_argument("--runs-root", type=Path, default=default_cache_dir() / "shift-sweep" / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a run-wide override for every point (as icecore run -p), e.g. -p epochs=6")
    parser.add_argument("--rescore", type=Path, metavar="SWEEP",
                        help="an earlier sweep's folder: its points' notebooks 04-05 again with this checkout")
    args = parser.parse_args()
    args.runs_root.mkdir(parents=True, exist_ok=False)
    overrides = {k: yaml.safe_load(v) for k, _, v in (p.partition("=") for p in args.param)}
    if args.rescore:
        points = finished_points(args.rescore)
        print(f"{len(points)} finished runs of {args.rescore} rescored under {args.runs_root}", flush=True)
        rows = [rescore_point(s, seed, args.rescore, args.runs_root, overrides) for s, seed in points]
    else:
        points = [(s, seed) for s in args.severities for seed in args.seeds]
        manifest = write_manifest(points, args, args.runs_root)
        print(f"{len(points)} runs under {args.runs_root} (synthetic twin: {args.train_per_class} labelled per class, "
              f"{args.core} core particles, {args.diatom_fraction:.0%} planted {NEW_CLASS})", flush=True)
        rows = [run_point(s, seed, manifest, args.runs_root, overrides) for s, seed in points]
    table = pd.DataFrame(rows)
    table.to_csv(args.runs_root / "sweep.csv", index=False)
    print("\nper severity (mean over seeds):")
    print(markdown(summary(table)))
    scores = [c for c in table if c.endswith(".recall@2n")]
    print("\nrecall@2n of the planted class per score (mean over seeds):")
    print(markdown(table.groupby("severity")[scores].mean().round(2).T))
    print(f"\nevery run: {args.runs_root / 'sweep.csv'}")


if __name__ == "__main__":
    main()
