"""lola-bench command line: each command parses its flags, calls the library, prints the result.

  app.py       the typer app and the root --kernels flag
  options.py   the flags every evaluation command shares (one RunOptions per invocation)
  display.py   one-line errors, progress with ETA, result tables
  checks.py    validation shared by the commands (before any model loads or file is written)
  commands.py  info, ruler, commonsense, speed
  sweep.py     sweep, report
  sweep_launch.py  sweep --launcher slurm|local (submit, print the jobs)
  text.py      perplexity, linearize
  reproduce.py reproduce (rerun a recorded run, compare)
  cache.py     cache list | clear (dequantized model copies)
"""

from __future__ import annotations

import sys

from . import cache, commands, reproduce, sweep, text  # noqa: F401  (registers the commands)
from .app import app

__all__ = ["app", "main"]


def main():  # pragma: no cover
    sys.exit(app())
