"""cache list | cache clear: the dequantized model copies in the cache directory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import app
from .display import console, user_errors

cache_app = typer.Typer(no_args_is_help=True, help="List or clear the dequantized model copies in the cache "
                        "directory ($LOLA_BENCH_CACHE, else ~/.cache/lola-bench).")
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
@user_errors
def cache_list():
    """Each dequantized copy with its size and source GGUF."""
    from ..models.cache_store import human_size, list_entries, models_dir

    entries = list_entries()
    if not entries:
        console.print(f"no dequantized models cached in {models_dir()}", highlight=False)
        return
    t = Table(title=f"cache: {models_dir()}")
    for col in ("name", "size", "source"):
        t.add_column(col)
    for e in entries:
        t.add_row(e.name, human_size(e.size), e.source or ("(partial copy)" if not e.complete else ""))
    t.add_row("total", human_size(sum(e.size for e in entries)), "")
    console.print(t)


@cache_app.command("clear")
@user_errors
def cache_clear(
    names: Annotated[Optional[list[str]], typer.Argument(help="Entry name(s) from `cache list`; none: all.",
                                                         show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
):
    """Delete dequantized copies (all, or the named ones). They are rebuilt on the next run that needs them."""
    from ..errors import UserError
    from ..models.cache_store import human_size, list_entries, models_dir, remove

    entries = list_entries()
    if names:
        known = {e.name for e in entries}
        missing = [n for n in names if n not in known]
        if missing:
            raise UserError(f"not in the cache {models_dir()}: {', '.join(missing)} "
                            f"(entries: {', '.join(sorted(known)) or 'none'})")
        entries = [e for e in entries if e.name in names]
    if not entries:
        console.print(f"nothing to clear in {models_dir()}", highlight=False)
        return
    total = human_size(sum(e.size for e in entries))
    if not yes and not typer.confirm(f"delete {len(entries)} cached model(s) ({total}) from {models_dir()}?"):
        console.print("nothing deleted", highlight=False)
        raise typer.Exit(1)
    removed = remove([e.name for e in entries])
    console.print(f"deleted {len(removed)} cached model(s), {total} freed", highlight=False)
