"""The ``icecore`` console command: synth, check, pack, run, report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from .config import PROFILE_NAMES, StageConfig, parse_override, stage_config, synth_config
from .data.dataset import check_dataset, load_dataset
from .run.pipeline import RunInterrupted, resume_run, run_notebooks
from .run.report import write_report
from .synth.dataset import generate


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic dataset in the instrument's format."""
    cfg = synth_config(args.profile, seed=args.seed, **({"workers": args.workers} if args.workers else {}))
    summary = generate(Path(args.out), cfg, progress=not args.quiet)
    print(yaml.safe_dump(summary, sort_keys=False))
    return 0


def _stage(args: argparse.Namespace) -> StageConfig:
    """The data part of a stage config from the common dataset arguments."""
    return stage_config(
        StageConfig, args.profile, dataset=args.dataset, manifest=args.manifest,
        cache_dir=args.cache_dir, skip_bad=args.skip_bad,
        image_size=getattr(args, "image_size", None),
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Validate a dataset and print the report; non-zero exit when anything is wrong (strict)."""
    reports = check_dataset(_stage(args), progress=not args.quiet)
    for part, report in reports.items():
        print(f"== {args.dataset or 'synthetic-' + args.profile} / {part}")
        print(report.summary())
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
    try:
        if args.resume:
            run_dir, results = resume_run(args.resume, progress=not args.quiet)
        else:
            run_dir, results = run_notebooks(
                args.profile, dataset=args.dataset, name=args.name, only=args.only, overrides=dict(args.param or []),
                runs_root=Path(args.runs_root) if args.runs_root else None, progress=not args.quiet,
            )
    except RunInterrupted as stop:
        print(f"icecore run: {stop}", file=sys.stderr)
        return 130 if isinstance(stop.cause, KeyboardInterrupt) else 1
    for r in results:
        print(f"{r.name}: {r.seconds:.1f} s -> {r.output}")
    print(f"run directory: {run_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's one-page HTML report (notebooks, figures, metrics, parameters) to share by e-mail."""
    path = write_report(args.run_dir, args.out or None, with_code=args.with_code, progress=not args.quiet)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _dataset_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by the commands that read a manifest dataset."""
    p.add_argument("dataset", nargs="?", default="", help="manifest entry (default: the profile's synthetic set)")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    p.add_argument("--manifest", default="data_manifest.yaml")
    p.add_argument("--cache-dir", default="", help="default: $ICECORE_CACHE or ~/.cache/icecore")
    p.add_argument("--skip-bad", action="store_true", help="drop bad items (listed in the report) instead of failing")


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

    p = sub.add_parser("check", help="validate a dataset and report every problem")
    _dataset_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("pack", help="decode and pack a dataset's images into the uint8 cache")
    _dataset_args(p)
    p.add_argument("--image-size", type=int, default=None)
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("run", help="execute the notebooks in order into a fresh run directory")
    p.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    p.add_argument("--dataset", default="", help="manifest entry (default: the profile's synthetic set)")
    p.add_argument("--name", default="", help="run directory name (default: timestamp-profile)")
    p.add_argument("--runs-root", default="", help="default: $ICECORE_RUNS or runs/")
    p.add_argument("--only", nargs="+", help="notebook numbers or names to run, e.g. 00 01")
    p.add_argument("-p", "--param", action="append", type=parse_override, metavar="KEY=VALUE",
                   help="notebook parameter override (repeatable), e.g. -p epochs=3")
    p.add_argument("--resume", default="", metavar="RUN_DIR",
                   help="continue a run that stopped, from its first unfinished notebook (same parameters)")
    p.set_defaults(func=cmd_run)

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
