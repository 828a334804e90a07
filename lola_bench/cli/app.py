"""The typer application and its root options (commands register themselves in commands.py and sweep.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..settings import KERNEL_MODES
from .display import err_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark LoLA (sliding window + sparse cache + linear state) against full attention.")


@app.callback()
def _root(
    kernels: Annotated[str, typer.Option("--kernels", envvar="LOLA_BENCH_KERNELS",
                                         help="LoLA implementation: auto (Triton kernels on CUDA, torch elsewhere), "
                                         "torch, or triton. Recorded in every result row with what actually ran."
                                         )] = "auto",
):
    """lola-bench: what LoLA's sparse cache buys on your model (accuracy, TTFT, decode latency, memory)."""
    if kernels not in KERNEL_MODES:
        err_console.print(f"[bold red]error:[/] --kernels {kernels!r}: choose auto, torch or triton")
        raise typer.Exit(2)
    from ..provenance import mark_start

    mark_start()
