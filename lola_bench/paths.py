"""Where lola-bench looks for things: cache directory, shared data, the repository root."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def cache_dir() -> Path:
    """Cache for dequantized weights: $LOLA_BENCH_CACHE, else $XDG_CACHE_HOME/lola-bench, else ~/.cache/lola-bench."""
    env = os.environ.get("LOLA_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lola-bench"


def data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The offline data mirror: the explicit path, else $LOLA_BENCH_DATA, else ../shared/data beside the checkout."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("LOLA_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    guess = REPO_ROOT.parent / "shared" / "data"
    return guess if guess.is_dir() else None


def results_dir() -> Path:
    """Default parent directory for run directories ($LOLA_BENCH_RESULTS or ./results)."""
    return Path(os.environ.get("LOLA_BENCH_RESULTS", "results"))
