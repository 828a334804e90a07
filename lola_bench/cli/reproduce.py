"""reproduce: rerun a recorded run into a new directory and print the per-column differences."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..errors import UserError
from .app import app
from .display import console, err_console, print_frame, user_errors


@app.command()
@user_errors
def reproduce(
    run_dir: Annotated[str, typer.Argument(help="A run directory (its config.json records the command).")],
    samples: Annotated[Optional[int], typer.Option("--samples", help="Override --samples (ruler runs).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Override --limit (commonsense runs).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="New run directory (default: RUN_DIR-reproduce-"
                                               "<time> beside it).")] = None,
):
    """Rerun RUN_DIR's recorded command with its recorded settings and compare the summaries column by column
    (accuracy columns exactly, timing columns as ratios); writes reproduce.csv / reproduce.md in the new run."""
    from ..errors import UserError
    from ..reproduce import exact_columns_identical
    from ..reproduce import reproduce as run_reproduce

    for name, value in (("--samples", samples), ("--limit", limit)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be >= 1, got {value}")
    new, cmp, notes = run_reproduce(run_dir, out, samples=samples, limit=limit, runner=run_cli)
    for n in notes:
        err_console.print(f"[yellow]settings differ: {n}[/]", highlight=False)
    shown = cmp[cmp["kind"].isin(["exact", "timing", "missing"])]
    print_frame(shown, f"reproduce {run_dir} -> {new}", ["attn", "window", "lambda", "sinks", "task", "ctx",
                                                           "metric", "column", "original", "reproduced",
                                                           "difference", "ratio"])
    same = exact_columns_identical(cmp)
    console.print(f"exact columns identical: {'yes' if same else 'no'}; comparison: {new / 'reproduce.md'}")


def run_cli(args: list[str]) -> None:
    """Run ``lola-bench ARGS`` in this process, with sys.argv set so that the new run records its own command."""
    import shlex
    import sys

    from .app import app

    saved = sys.argv
    sys.argv = ["lola-bench", *args]
    try:
        rc = app(args=args, prog_name="lola-bench", standalone_mode=False)
    finally:
        sys.argv = saved
    if rc not in (None, 0):
        raise UserError(f"the rerun `lola-bench {shlex.join(args)}` failed (exit code {rc})")
