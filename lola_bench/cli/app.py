"""The typer application and its root options (commands register themselves in commands.py and sweep.py)."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

try:                                       # typer >= 0.20 vendors its own copy of click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as _click_exc

from ..settings import KERNEL_MODES
from .display import err_console


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, missing or malformed value) as one line on stderr, exit code 2, like every
    other bad input; typer's boxed rendering spans several lines. Asking for help with no arguments still shows
    the help."""

    def make_context(self, info_name, args, parent=None, **extra):
        with _one_line():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


class _one_line:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        no_args_help = getattr(_click_exc, "NoArgsIsHelpError", ())
        if exc is None or not isinstance(exc, _click_exc.ClickException) or isinstance(exc, no_args_help):
            return False
        where = ""
        if isinstance(exc, _click_exc.UsageError) and exc.ctx is not None:
            where = f"{exc.ctx.command_path}: "
        msg = " ".join(exc.format_message().replace("Value error, ", "").split())
        err_console.print(f"[bold red]error:[/] {where}{msg} (see --help)", highlight=False, soft_wrap=True,
                          markup=True)
        raise typer.Exit(exc.exit_code if exc.exit_code else 2) from None


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark LoLA (sliding window + sparse cache + linear state) against full attention.")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"lola-bench {__version__}")
        raise typer.Exit()


def quiet_third_party(verbose: bool = False) -> None:
    """Silence third-party chatter unless ``verbose``: transformers' "Loading weights" bars and advisory warnings
    (environment variables read when transformers / huggingface_hub log), lm-eval's per-task logging and its
    "Overwriting default num_fewshot" lines (logger levels). Only the CLI calls this; the library logs as usual."""
    import logging
    import os

    if verbose:
        return
    for var, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TQDM_DISABLE", "1")):
        os.environ.setdefault(var, value)
    for name in ("lm_eval", "lm-eval", "transformers", "huggingface_hub", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _silence_tqdm()
    if "transformers" in __import__("sys").modules:       # already imported: its own switches
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def _silence_tqdm() -> None:
    """tqdm reads TQDM_DISABLE when it is imported, which happens before the CLI runs, and lm-eval passes
    ``disable=False`` explicitly: every tqdm bar (lm-eval's, datasets') is turned off at its constructor instead."""
    import sys

    std = sys.modules.get("tqdm.std")
    if std is None or getattr(std.tqdm.__init__, "_lola_quiet", False):
        return
    init = std.tqdm.__init__

    def quiet_init(self, *args, **kwargs):
        if len(args) < 8:                           # disable is tqdm's 8th positional parameter
            kwargs["disable"] = True
        init(self, *args, **kwargs)

    quiet_init._lola_quiet = True
    std.tqdm.__init__ = quiet_init


@app.callback()
def _root(
    ctx: typer.Context,
    kernels: Annotated[str, typer.Option("--kernels", envvar="LOLA_BENCH_KERNELS",
                                         help="LoLA implementation: auto (Triton kernels on CUDA, torch elsewhere), "
                                         "torch, or triton. Recorded in every result row with what actually ran. "
                                         "Also accepted after the command (which then wins).")] = "auto",
    verbose: Annotated[bool, typer.Option("--verbose", help="Show third-party logging and progress bars "
                                          "(transformers, lm-eval); silenced by default.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the lola-bench version and exit.")] = False,
):
    """lola-bench: what LoLA's sparse cache buys on your model (accuracy, TTFT, decode latency, memory)."""
    quiet_third_party(verbose)
    if kernels not in KERNEL_MODES:
        err_console.print(f"[bold red]error:[/] --kernels {kernels!r}: choose auto, torch or triton")
        raise typer.Exit(2)
    from ..provenance import mark_start

    mark_start()
    _data_parallel_launch(ctx.invoked_subcommand)


def _data_parallel_launch(command: str | None) -> None:
    """Under accelerate launch: refuse the commands that do not split their work; ranks other than 0 print only
    errors (rank 0 prints the progress and the results)."""
    from ..distributed import check_command, single_cpu_launch_notice, world
    from ..errors import UserError
    from .display import console

    try:
        check_command(command)
    except UserError as e:
        if world().is_main:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if not world().is_main:
        console.quiet = err_console.quiet = True     # user_errors still prints this rank's own errors
    notice = single_cpu_launch_notice()
    if notice:
        err_console.print(f"[yellow]{notice}[/]", highlight=False, soft_wrap=True)
