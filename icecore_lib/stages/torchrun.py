"""Notebook 02's classifiers or 03's autoencoders trained under ``torchrun`` into a run directory.

    torchrun --standalone --nproc_per_node=4 -m icecore_lib.stages.torchrun cnn --profile full --run-dir RUN
    torchrun --standalone --nproc_per_node=4 -m icecore_lib.stages.torchrun autoencoder --profile full -p latent_dims=[64]

The notebooks then continue the same run directory: their ``fit`` finds the finished checkpoints (same
parameters) and does not train again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config import PROFILE_NAMES, AEConfig, CNNConfig, parse_override, stage_config
from ..data.dataset import load_dataset
from ..nn.distributed import cleanup, init_from_env, is_main, main_first
from ..run.rundir import continue_run, record_stage
from ..train.autoencoder import fit_autoencoder
from ..train.classifier import fit_torch_classifier

STAGES = ("cnn", "autoencoder")  # the notebook stages the entry point trains: 02's classifiers, 03's autoencoders


def train_stage(
    stage: str, profile: str, run_dir: str, dataset: str, overrides: dict[str, Any], progress: bool
) -> list[Path]:
    """Train what notebook 02 (``cnn``: every ``variants``) or 03 (``autoencoder``: every ``latent_dims``)
    trains, into the run directory's ``models/`` as the notebook names it; rank 0 writes the tables.
    Returns the model folders."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    cfg_class = CNNConfig if stage == "cnn" else AEConfig
    cfg = stage_config(cfg_class, profile, **{"run_dir": run_dir, "dataset": dataset, **overrides})
    run = continue_run(cfg.run_dir)
    with main_first():
        bundle = load_dataset(cfg, progress=progress)
    if stage == "cnn":
        folders = {kind: run.file("model", model=f"cnn_{kind}") for kind in cfg.variants}
        trained = [fit_torch_classifier(bundle, cfg, kind, out, progress=progress)
                   for kind, out in folders.items()]
    else:
        folders = {dim: run.file("model", model=f"ae{dim}") for dim in cfg.latent_dims}
        trained = [fit_autoencoder(bundle, cfg, dim, out, train_on=cfg.train_on, progress=progress)[1]
                   for dim, out in folders.items()]
    if is_main():
        record_stage(run, f"{stage}_torchrun", cfg)
        for outputs in trained:
            outputs.save(run)
    return list(folders.values())


def build_parser() -> argparse.ArgumentParser:
    """The entry point's arguments."""
    parser = argparse.ArgumentParser(prog="python -m icecore_lib.stages.torchrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES, help="cnn = notebook 02's classifiers, autoencoder = notebook 03's")
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="demo")
    parser.add_argument("--run-dir", default="", help="run directory (default: the latest run notebook 00 started)")
    parser.add_argument("--dataset", default="", help="manifest entry (default: the profile's synthetic set)")
    parser.add_argument("-p", "--param", action="append", type=parse_override, metavar="KEY=VALUE",
                        help="stage config override (repeatable), e.g. -p epochs=3 -p variants=[image]")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Join torchrun's process group, train one stage, leave the group; rank 0 prints what it trained."""
    args = build_parser().parse_args(argv)
    rank, size = init_from_env()
    try:
        folders = train_stage(args.stage, args.profile, args.run_dir, args.dataset, dict(args.param or []),
                              progress=rank == 0 and not args.quiet)
    finally:
        cleanup()
    if rank == 0:
        print(f"trained on {size} process(es): " + ", ".join(str(f) for f in folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
