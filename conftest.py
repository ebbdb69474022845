"""Keep every test run, notebooks included, away from the user's cache and runs folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from icecore_lib.numba_cache import numba_cache_dir


def pytest_configure(config: pytest.Config) -> None:
    """Point ICECORE_CACHE and ICECORE_RUNS at a fresh temporary folder (nbval kernels inherit it)."""
    root = Path(tempfile.mkdtemp(prefix="icecore-tests-"))
    # Compiled numba kernels are no user data: keep them where a later test session finds them again.
    os.environ["NUMBA_CACHE_DIR"] = str(numba_cache_dir())  # read before ICECORE_CACHE moves
    os.environ["ICECORE_CACHE"] = str(root / "cache")
    os.environ["ICECORE_RUNS"] = str(root / "runs")
    os.environ.setdefault("MPLBACKEND", "Agg")
