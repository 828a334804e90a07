"""lola-bench command line (thin: parse flags, call the library, print)."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Benchmark LoLA (sliding window + sparse cache + linear state) against full attention.")
console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Bad input: one red line on stderr, exit code 2, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


@app.callback()
def _root():
    """lola-bench: what LoLA's sparse cache buys on your model (accuracy, TTFT, decode latency, memory)."""


# ---- shared options -------------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", help="Model spec: smollm2-135m (embedded default), random:<preset> "
                                       "(tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b), a .gguf path, a local model "
                                       "directory, or a Hugging Face hub id (online).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | "
                                       "float16.")]
WindowOpt = Annotated[int, typer.Option("--window", help="eta: local sliding window (exact softmax). With the default "
                                        "cadence (chunk = eta) a query sees between eta+1 and 2*eta recent keys.")]
LambdaOpt = Annotated[int, typer.Option("--lambda", help="lambda: sparse global cache size (pairs kept by the scorer).")]
ScorerOpt = Annotated[str, typer.Option("--scorer", help="Which evicted pairs stay cached: sre (self-recall error, "
                                        "default), random, key_norm, attention, recency, sink.")]
FeatureMapOpt = Annotated[str, typer.Option("--feature-map", help="phi for the linear state: hedgehog (learned, needs a "
                                            "checkpoint), hedgehog-identity, elu, relu, taylor.")]
CombineOpt = Annotated[str, typer.Option("--combine", help="How softmax and linear parts mix: lolcats | gated.")]
GqaOpt = Annotated[str, typer.Option("--gqa", help="grouped: K/V and selection once per KV head; expanded: per query "
                                     "head (the public code's layout).")]
ChunkOpt = Annotated[Optional[int], typer.Option("--chunk", help="Update cadence in tokens (default: = window).")]
CkptOpt = Annotated[Optional[str], typer.Option("--lola-ckpt", help="Linearization checkpoint (feature maps + window "
                                               "factors [+ LoRA]); 'none' disables the shipped default.")]


@app.command()
@user_errors
def info(device: DeviceOpt = "auto"):
    """Versions, device, cache directory, embedded model and data directories."""
    from .models.loading import EMBEDDED_INSTALL_HINT, dequantized_cache_path, embedded_available, embedded_gguf_path
    from .paths import cache_dir, data_dir
    from .provenance import device_label, git_info, package_versions

    t = Table(title="lola-bench", show_header=False)
    for k, v in package_versions().items():
        t.add_row(k, str(v))
    g = git_info()
    t.add_row("git", f"{g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}")
    from .models.loading import resolve_device
    t.add_row("device", device_label(resolve_device(device)))
    t.add_row("cache dir", str(cache_dir()))
    if embedded_available():
        gguf = embedded_gguf_path()
        cached = (dequantized_cache_path(gguf) / "config.json").is_file()
        t.add_row("embedded model", f"{gguf} ({'dequantized copy cached' if cached else 'not yet dequantized'})")
    else:
        t.add_row("embedded model", f"[red]missing[/]: {EMBEDDED_INSTALL_HINT}")
    d = data_dir()
    t.add_row("data dir", f"{d}" if d else "not found (set LOLA_BENCH_DATA or pass --data-dir)")
    if d:
        found = sorted(p.name for p in d.iterdir() if p.is_dir())
        t.add_row("data sets", ", ".join(found))
    t.add_row("triton kernels", "TRITON_INTERPRET=1" if os.environ.get("TRITON_INTERPRET") == "1" else
              ("CUDA" if device_label(resolve_device(device)).startswith("GPU") else "off (CPU: torch path)"))
    console.print(t)


def main():  # pragma: no cover
    sys.exit(app())
