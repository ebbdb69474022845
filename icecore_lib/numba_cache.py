"""umap-learn's numba kernels compiled once per machine, not once per Python process.

umap-learn jit-compiles its nearest-neighbour, smoothing and layout kernels without numba's on-disk cache, so
every fresh process (each notebook's kernel, each test run) spent ~25 s compiling them again (measured on 2
cores: docs/measurements.md). :func:`umap_module` turns numba's cache on for them; the compiled code goes
to ``$NUMBA_CACHE_DIR`` when set, else to ``<icecore cache>/numba`` (numba keys each entry by the source file's
timestamp and the CPU, so a changed umap-learn or another machine compiles afresh).
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path
from types import ModuleType

from .config import default_cache_dir

# The umap-learn modules whose module-level jitted functions get the on-disk cache.
UMAP_MODULES = ("umap.utils", "umap.distances", "umap.layouts", "umap.umap_")


def numba_cache_dir() -> Path:
    """Where numba keeps compiled code: $NUMBA_CACHE_DIR, else the icecore cache's ``numba`` folder."""
    return Path(os.environ.get("NUMBA_CACHE_DIR") or default_cache_dir() / "numba")


@cache
def umap_module() -> ModuleType:
    """``import umap`` with numba's on-disk cache enabled for umap-learn's own jitted functions (once per process)."""
    folder = numba_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(folder)  # numba re-reads its settings from the environment at compile time
    import numba
    from numba.core.dispatcher import Dispatcher

    numba.config.CACHE_DIR = str(folder)
    umap = importlib.import_module("umap")
    for name in UMAP_MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, Dispatcher) and not value._cache.cache_path:
                value.enable_caching()
    return umap
