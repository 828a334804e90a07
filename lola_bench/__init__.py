"""lola-bench: benchmark and evaluation harness for LoLA (low-rank linear attention with sparse caching)."""

__version__ = "0.1.0"
