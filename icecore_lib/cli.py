"""The ``icecore`` console command: synth, import, check, pack, run, apply, export, report."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml

from .config import PROFILE_NAMES, StageConfig, default_cache_dir, parse_override, stage_config, synth_config
from .data.dataset import check_dataset, is_path, load_dataset, open_dataset
from .data.layouts import import_path
from .data.register import register_import
from .files import atomic_write_text
from .run.export import FORMATS, export_run
from .run.pipeline import NotebookResult, RunInterrupted, apply_run, resume_run, run_notebooks
from .run.report import write_report
from .synth.dataset import generate


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic dataset in the instrument's format."""
    cfg = synth_config(args.profile, seed=args.seed, **({"workers": args.workers} if args.workers else {}))
    summary = generate(Path(args.out), cfg, progress=not args.quiet)
    print(yaml.safe_dump(summary, sort_keys=False))
    return 0


def _dataset(text: str) -> str:
    """A dataset argument: a manifest name as given, a path made absolute (notebooks run in their own folder)."""
    return str(Path(text).expanduser().resolve()) if text and (is_path(text) or Path(text).exists()) else text


def _stage(args: argparse.Namespace) -> StageConfig:
    """The data part of a stage config from the common dataset arguments (a path is imported, layout printed)."""
    cfg = stage_config(
        StageConfig, args.profile, dataset=_dataset(args.dataset), manifest=args.manifest,
        cache_dir=args.cache_dir, skip_bad=args.skip_bad,
        image_size=getattr(args, "image_size", None),
    )
    _, _, imported = open_dataset(cfg, progress=not args.quiet)
    if imported is not None:
        print(imported.describe())
    return cfg


def cmd_import(args: argparse.Namespace) -> int:
    """Import a lab's folder or CSV and write its manifest entry (classes, sha256 of its files) under a name."""
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    imported = import_path(args.path, cache, name=args.name, pixel_um=args.pixel_um, progress=not args.quiet)
    print(imported.describe())
    manifest = register_import(imported, Path(args.manifest), name=args.name, pixel_um=args.pixel_um)
    print(f"dataset {args.name!r} written to {manifest}; use it by name: icecore run --dataset {args.name}"
          + (f" --manifest {manifest}" if args.manifest != "data_manifest.yaml" else ""))
    return 0


def _save_reports(reports: dict, cfg: StageConfig) -> Path:
    """Write every part's check report as JSON into a fresh folder under the cache; returns the folder."""
    name = Path(cfg.dataset_name).name or cfg.dataset_name
    folder = cfg.cache_path / "reports" / f"check-{name}-{datetime.now():%Y%m%d-%H%M%S-%f}"
    for part, report in reports.items():
        atomic_write_text(folder / f"{part}.json", report.to_json() + "\n")
    return folder


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a dataset and print the report; non-zero exit when anything is wrong (strict)."""
    cfg = _stage(args)
    reports = check_dataset(cfg, progress=not args.quiet)
    for part, report in reports.items():
        print(f"== {args.dataset or 'synthetic-' + args.profile} / {part}")
        print(report.summary())
    print(f"full reports (every problem, JSON): {_save_reports(reports, cfg)}")
    bad = any(not r.ok for r in reports.values())
    if bad and args.skip_bad:
        print("problems found; with --skip-bad the listed items are dropped when packing")
        return 0
    return 1 if bad else 0


def cmd_pack(args: argparse.Namespace) -> int:
    """Decode, resize and pack a dataset's images once into the uint8 cache."""
    start = time.perf_counter()
    bundle = load_dataset(_stage(args), progress=not args.quiet)
    seconds = time.perf_counter() - start
    for part, packed in bundle.parts().items():
        print(f"{part}: {len(packed.table)} particles, {packed.images.shape[1]} px -> {packed.path}")
    print(f"done in {seconds:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Execute the ordered notebooks into a fresh run directory, or continue one that stopped (``--resume``)."""
    if args.resume:
        return _report_run("run", lambda: resume_run(args.resume, progress=not args.quiet))
    return _report_run("run", lambda: run_notebooks(
        args.profile, dataset=_run_dataset(args), name=args.name, only=args.only, overrides=_run_overrides(args),
        runs_root=Path(args.runs_root) if args.runs_root else None, progress=not args.quiet))


def cmd_apply(args: argparse.Namespace) -> int:
    """Classify a new core with a finished run's models (nothing retrained) into a fresh run directory."""
    return _report_run("apply", lambda: apply_run(
        args.run_dir, dataset=_run_dataset(args), name=args.name, overrides=_run_overrides(args),
        runs_root=Path(args.runs_root) if args.runs_root else None, progress=not args.quiet))


def _report_run(command: str, execute: Callable[[], tuple[Path, list[NotebookResult]]]) -> int:
    """Run notebooks; print each one's time and the run directory, or the one line saying what stopped and was kept."""
    try:
        run_dir, results = execute()
    except RunInterrupted as stop:
        print(f"icecore {command}: {stop}", file=sys.stderr)
        return 130 if isinstance(stop.cause, KeyboardInterrupt) else 1
    for r in results:
        print(f"{r.name}: {r.seconds:.1f} s -> {r.output}")
    print(f"run directory: {run_dir}")
    return 0


def _run_dataset(args: argparse.Namespace) -> str:
    """``--data PATH`` (imported now, so a bad folder fails before any notebook) or ``--dataset NAME``."""
    if args.data and args.dataset:
        raise ValueError("give --data PATH or --dataset NAME, not both")
    if not args.data:
        return args.dataset
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    print(import_path(args.data, cache, progress=not args.quiet).describe())
    return _dataset(args.data)


def _run_overrides(args: argparse.Namespace) -> dict:
    """Notebook overrides: ``-p`` pairs, plus the manifest and cache folder when given (as absolute paths)."""
    overrides = dict(args.param or [])
    if args.manifest:
        overrides["manifest"] = str(Path(args.manifest).expanduser().resolve())
    if args.cache_dir:
        overrides["cache_dir"] = str(Path(args.cache_dir).expanduser().resolve())
    return overrides


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's core predictions in a neighbour tool's format (EcoTaxa: TSV + crops in one zip)."""
    path = export_run(args.run_dir, args.format, args.out or None)
    print(f"{args.format}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's one-page HTML report (notebooks, figures, metrics, parameters) to share by e-mail."""
    path = write_report(args.run_dir, args.out or None, with_code=args.with_code, progress=not args.quiet)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _dataset_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the commands that read a manifest dataset."""
    p.add_argument("dataset", nargs="?", default="",
                   help="manifest entry or a path to a lab's folder/CSV (default: the profile's synthetic set)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    p.add_argument("--manifest", default="data_manifest.yaml")
    p.add_argument("--cache-dir", default="", help="default: $ICECORE_CACHE or ~/.cache/icecore")
    p.add_argument("--skip-bad", action="store_true", help="drop bad items (listed in the report) instead of failing")


def _run_dir_args(p: argparse.ArgumentParser, default_name: str, param_help: str) -> None:
    """Arguments of the commands that write a fresh run directory: manifest, cache, name, runs root, overrides."""
    p.add_argument("--manifest", default="", help="manifest file (default: data_manifest.yaml here or above)")
    p.add_argument("--cache-dir", default="", help="default: $ICECORE_CACHE or ~/.cache/icecore")
    p.add_argument("--name", default="", help=f"run directory name (default: {default_name})")
    p.add_argument("--runs-root", default="", help="default: $ICECORE_RUNS or runs/")
    p.add_argument("-p", "--param", action="append", type=parse_override, metavar="KEY=VALUE", help=param_help)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="icecore", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset in the FlowCam format")
    p.add_argument("out", help="output folder (must not exist or be empty)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="import a lab's folder or CSV and add it to a manifest by name")
    p.add_argument("path", help="a FlowCam run folder (or folder of them), class folders, a CSV with imgpaths, "
                                "or a folder of crops")
    p.add_argument("--name", required=True, help="the dataset's name in the manifest")
    p.add_argument("--manifest", default="data_manifest.yaml", help="the manifest to add it to (created if absent)")
    p.add_argument("--cache-dir", default="", help="default: $ICECORE_CACHE or ~/.cache/icecore")
    p.add_argument("--pixel-um", type=float, default=None,
                   help="micrometres per pixel, when the features must be computed from the crops")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("check", help="validate a dataset (manifest name or path) and report every problem")
    _dataset_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("pack", help="decode and pack a dataset's images into the uint8 cache")
    _dataset_args(p)
    p.add_argument("--image-size", type=int, default=None)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("run", help="execute the notebooks in order into a fresh run directory")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    p.add_argument("--dataset", default="", help="manifest entry (default: the profile's synthetic set)")
    p.add_argument("--data", default="", metavar="PATH",
                   help="a lab's own folder or CSV instead of a manifest entry (layout detected and named)")
    _run_dir_args(p, "timestamp-profile", "notebook parameter override (repeatable), e.g. -p epochs=3")
    p.add_argument("--only", nargs="+", help="notebook numbers or names to run, e.g. 00 01")
    p.add_argument("--resume", default="", metavar="RUN_DIR",
                   help="continue a run that stopped, from its first unfinished notebook (same parameters)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("apply", help="classify a new core with a finished run's models (nothing retrained)")
    p.add_argument("run_dir", help="a finished run directory with a model card (notebooks 00-02 at least)")
    p.add_argument("--dataset", default="", help="the new core: a manifest entry (default: the profile's synthetic set)")
    p.add_argument("--data", default="", metavar="PATH", help="the new core: a lab's own folder or CSV")
    _run_dir_args(p, "timestamp-apply", "apply setting override (repeatable), e.g. -p gallery_size=48")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("export", help="write RUN_DIR's core predictions for EcoTaxa (TSV + crops, one zip)")
    p.add_argument("run_dir", help="a run that classified a core (notebook 02, or `icecore apply`)")
    p.add_argument("--format", choices=FORMATS, default="ecotaxa")
    p.add_argument("--out", default="", help="where to write it (default: RUN_DIR/exports/)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: one self-contained page to share a run")
    p.add_argument("run_dir", help="a run directory written by `icecore run` or the notebooks")
    p.add_argument("--with-code", action="store_true", help="keep the code cells (hidden by default)")
    p.add_argument("--out", default="", help="where to write the page (default: RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console command; errors print one clear line and exit non-zero."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        print(f"icecore {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
