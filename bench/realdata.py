"""Benchmark on real crops: the whole pipeline on a real FlowCam export, every classifier's honest numbers.

Runs ``icecore run --data <export>/classes`` (the crops a person sorted into class folders, features from the
export's CSV), then prints for BDT, MLP, CNN and CNN+metadata on the held-out test split: accuracy, balanced
accuracy, macro-F1 and per-class recall (the classes are unbalanced: accuracy alone flatters), next to the
source repository's own classifier (scikit-learn GradientBoosting, 500 trees of depth 5 on its selected
features; it publishes no numbers, so its recipe is re-fitted here on the same split), and the
leave-one-class-out novelty AUROC of each real class. With ``--raw`` it also imports the raw run folders and
prints particles per ml per run beside the instrument's run summary.

    python bench/realdata.py                                   # ../shared/realdata/flowcam-vickot, demo profile
    python bench/realdata.py /path/to/export --profile ci --raw
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier

from icecore_lib.config import StageConfig, default_cache_dir, stage_config
from icecore_lib.data.dataset import load_dataset
from icecore_lib.data.layouts import import_path
from icecore_lib.evaluate import evaluate
from icecore_lib.run.artifacts import Run
from icecore_lib.run.pipeline import run_notebooks
from icecore_lib.schema import FLOWCAM_FEATURES, LABEL, SAMPLE, SPLIT, VOLUME
from icecore_lib.train.classifier import ClassifierOutputs, evaluate_split

DEFAULT_EXPORT = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "flowcam-vickot"
MODELS = {"bdt": "BDT (XGBoost, 34 features)", "mlp": "metadata MLP", "image": "CNN (images)",
          "both": "CNN + metadata"}


def model_rows(run: Run, table: pd.DataFrame) -> list[dict[str, object]]:
    """Test-split metrics of every classifier the run trained."""
    rows = []
    for key, label in MODELS.items():
        try:
            outputs = ClassifierOutputs.load(run, key)
        except FileNotFoundError:
            continue
        rows.append(_row(label, evaluate_split(outputs, table, "test")))
    return rows


def _row(label: str, result: dict) -> dict[str, object]:
    """One table row: the summary metrics and each class's recall."""
    recall = result["per_class"]["recall"]
    return {"model": label, "n_test": result["n"], "accuracy": result["accuracy"],
            "balanced_accuracy": result["balanced_accuracy"], "macro_f1": result["macro_f1"],
            **{f"recall {k}": v for k, v in recall.items()}}


def source_recipe_rows(export: Path, table: pd.DataFrame) -> list[dict[str, object]]:
    """The source repository's classifier recipe (GradientBoosting, 500 trees of depth 5), re-fitted on the same train
    split and scored on the same test split: on its own selected features, and on the 34 FlowCam features."""
    selected = export / "selected_features.csv"
    own = [f for f in pd.read_csv(selected, header=None)[0] if f in table.columns] if selected.is_file() else []
    sets = {f"source repo's GBC, its selected feature(s): {', '.join(own)}": own} if own else {}
    sets["source repo's GBC recipe on the 34 FlowCam features"] = list(FLOWCAM_FEATURES)
    fit, test = table[table[SPLIT] != "test"], table[table[SPLIT] == "test"]
    rows = []
    for label, features in sets.items():
        model = GradientBoostingClassifier(n_estimators=500, max_depth=5, random_state=42)
        model.fit(fit[features].to_numpy(float), fit[LABEL])
        proba = pd.DataFrame(model.predict_proba(test[features].to_numpy(float)), index=test.index,
                             columns=model.classes_)
        rows.append(_row(label, evaluate(test[LABEL], proba)))
    return rows


def loco_rows(run: Run) -> pd.DataFrame:
    """Leave-one-class-out novelty AUROC per held-out real class (notebook 05's table)."""
    try:
        loco = run.read("loco_novelty")
    except FileNotFoundError:
        return pd.DataFrame()
    auroc = loco.xs("auroc", axis=1, level="metric") if isinstance(loco.columns, pd.MultiIndex) else loco
    return auroc


def raw_concentrations(raw: Path, cache: Path) -> pd.DataFrame:
    """Particles per ml per run from the imported raw folders, beside the run summary's own count / volume."""
    imported = import_path(raw, cache, progress=False)
    core = pd.read_csv(imported.folder / "core.csv")
    runs = pd.read_csv(imported.folder / "runs.csv").set_index(SAMPLE)
    counted = core.groupby(SAMPLE).agg(n=(SAMPLE, "size"), volume_ml=(VOLUME, "first"))
    counted["per_ml"] = counted["n"] / counted["volume_ml"]
    counted["summary_per_ml"] = runs["particle_count"] / runs["fluid_volume_ml"]
    return counted


def _cell(value: object, digits: int) -> str:
    """A table cell: floats to ``digits`` decimals (ones too small for that to 4 significant digits)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.{digits}f}" if abs(value) >= 10**-digits or value == 0 else f"{value:.4g}"


def markdown(frame: pd.DataFrame, digits: int = 3, index: bool = True) -> str:
    """A DataFrame as a GitHub markdown table (numbers rounded to ``digits``)."""
    shown = frame.reset_index() if index else frame
    cells = [[_cell(v, digits) for v in row] for row in shown.itertuples(index=False)]
    header = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def main() -> None:
    """Run the pipeline on the export and print the tables (markdown, for the README)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", nargs="?", default=str(DEFAULT_EXPORT),
                        help="a folder holding classes/ (and raw/, selected_features.csv)")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--raw", action="store_true", help="also import raw/ and print its concentrations")
    args = parser.parse_args()
    export = Path(args.export).resolve()
    classes = export / "classes"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as runs_root:
        run_dir, results = run_notebooks(args.profile, dataset=str(classes), runs_root=Path(runs_root), progress=False)
        run = Run(run_dir)
        table = load_dataset(stage_config(StageConfig, args.profile, dataset=str(classes)), progress=False).train.table
        rows = model_rows(run, table)
        recipe = source_recipe_rows(export, table)
        loco = loco_rows(run)
    minutes = (time.perf_counter() - start) / 60
    print(f"Measured on real crops: {classes} ({len(table):,} person-sorted particles, "
          f"{table[LABEL].value_counts().to_dict()}), profile {args.profile}, test split "
          f"{int((table[SPLIT] == 'test').sum())} particles; {minutes:.1f} min for all six notebooks\n")
    print(markdown(pd.DataFrame(rows + recipe), index=False))
    for result in results:
        print(f"  {result.name}: {result.seconds:.0f} s")
    if not loco.empty:
        print("\nLeave-one-class-out novelty AUROC (held-out real class vs the others' test particles):\n")
        print(markdown(loco))
    if args.raw:
        print("\nParticles per ml per run (all particles), icecore vs the run summary's Particle Count / "
              "Fluid Volume Imaged:\n")
        print(markdown(raw_concentrations(export / "raw", default_cache_dir()).round({VOLUME: 5}), digits=1))


if __name__ == "__main__":
    main()
