"""Benchmark: ``icecore apply`` on a large new core (default 100,000 crops) with the demo profile's models.

Two synthetic datasets are generated once into ``--workdir`` (reused by later calls): a small reference set that
a quick training run (every notebook, demo profile at 64 px, ``--epochs`` epochs: the models' accuracy is not
what is timed) learns from, and a new core of ``--n-core`` crops from another seed. Timed, each once:
- packing the new core (decode, resize, write the uint8 cache: once per core, the first thing ``apply`` does);
- the apply run (the notebook end to end: classification, composition with intervals, concentrations, novelty
  with the detectors refitted, drift, galleries, report), and within it the classifier's pass over the core.

    python bench/apply.py                          # 100,000 crops
    python bench/apply.py --n-core 20000 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from icecore_lib.config import ApplyConfig, default_cache_dir, stage_config, synth_config
from icecore_lib.data.dataset import load_core
from icecore_lib.run.pipeline import apply_run, run_notebooks
from icecore_lib.schema import CLASSES
from icecore_lib.synth.dataset import generate


def dataset(root: Path, name: str, **sizes: int) -> dict:
    """A synthetic dataset generated under ``root/name`` (once), as a manifest entry."""
    folder = root / name
    if not (folder / "core.csv").is_file():
        start = time.perf_counter()
        generate(folder, synth_config("demo", **sizes))
        print(f"generated {name} in {time.perf_counter() - start:.0f} s")
    return {"root": str(folder), "parts": {"train": {"csv": "train.csv", "images": "train.zip"},
                                           "core": {"csv": "core.csv", "images": "core.zip"},
                                           "truth": {"csv": "core_truth.csv"}}}


def main() -> None:
    """Generate (or reuse) the data, train once, pack and apply; print the times and the rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-core", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default=str(default_cache_dir() / "bench-apply"))
    args = parser.parse_args()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"classes": dict(CLASSES), "datasets": {
        "reference": dataset(root, "reference", seed=0, n_train_per_class=150, n_core=1000, n_core_samples=4),
        "new-core": dataset(root, "new-core", seed=1, n_train_per_class=2, n_core=args.n_core, n_core_samples=20),
    }}))
    overrides = {"manifest": str(manifest), "epochs": args.epochs, "pumap_epochs": 2, "search_iterations": 0}
    start = time.perf_counter()
    trained, _ = run_notebooks("demo", dataset="reference", runs_root=root / "runs", overrides=overrides)
    print(f"training run (not timed as apply): {time.perf_counter() - start:.0f} s -> {trained}")

    cfg = stage_config(ApplyConfig, "demo", dataset="new-core", manifest=str(manifest), image_size=64)
    start = time.perf_counter()
    core = load_core(cfg).core
    pack_s = time.perf_counter() - start
    start = time.perf_counter()
    applied, _ = apply_run(trained, dataset="new-core", runs_root=root / "runs",
                           overrides={"manifest": str(manifest)})
    apply_s = time.perf_counter() - start
    metrics = json.loads((applied / "metrics.json").read_text())["apply"]
    n = len(core.table)
    print(f"\n{n:,} crops, 64 px, {metrics['model_card']} ({metrics['dataset']})")
    print(f"pack (once per core)         {pack_s:7.1f} s  {n / pack_s:8,.0f} crops/s")
    print(f"apply run (notebook, report) {apply_s:7.1f} s  {n / apply_s:8,.0f} crops/s")
    print(f"  of which the classifier    {metrics['classify_seconds']:7.1f} s  {metrics['classify_per_second']:8,.0f} crops/s")
    print(f"pack + apply                 {pack_s + apply_s:7.1f} s = {(pack_s + apply_s) / 60:.1f} min")
    print(f"drift verdict {metrics['drift']['verdict']}, flagged unknown {metrics.get('flagged_unknown_fraction')}")


if __name__ == "__main__":
    main()
