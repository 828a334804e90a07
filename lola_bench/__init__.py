"""lola-bench: benchmark and evaluation harness for LoLA (low-rank linear attention with sparse caching)."""

__version__ = "0.1.0"

from .api import Loaded, load, run_commonsense, run_ruler  # noqa: E402

__all__ = ["Loaded", "load", "run_commonsense", "run_ruler", "__version__"]
