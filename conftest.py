"""Keep every test run, notebooks included, away from the user's cache and runs folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point ICECORE_CACHE and ICECORE_RUNS at a fresh temporary folder (nbval kernels inherit it)."""
    root = Path(tempfile.mkdtemp(prefix="icecore-tests-"))
    os.environ["ICECORE_CACHE"] = str(root / "cache")
    os.environ["ICECORE_RUNS"] = str(root / "runs")
    os.environ.setdefault("MPLBACKEND", "Agg")
