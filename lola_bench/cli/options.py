"""The flags every evaluation command shares, declared once.

``@run_options(command, attn_default=...)`` adds the model flags (--model, --device, --dtype, --lola-ckpt), the
LoLA flags (--attn, --window, --lambda, --scorer, --feature-map, --combine, --evict-at, --sinks, --gqa, --chunk) and the
output flags (--threads, --out, --overwrite) to a command and hands it one ``RunOptions`` as ``opts``.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Annotated, Literal, Optional

import click
import typer

from ..attention.config import COMBINES, EVICT_AT, FEATURE_MAPS, GQA_MODES, SCORERS
from ..errors import UserError
from ..settings import DECODE_MODES, KERNEL_MODES, PRESETS, LolaFlags, ModelSettings

# One-value enumerated flags are typed as Literal: typer turns them into click.Choice, so --help shows
# <a|b|c> and a bad value is refused before any work. Lists name their choices in the help text instead.
Combine = Literal[COMBINES]
FeatureMap = Literal[FEATURE_MAPS]
Gqa = Literal[GQA_MODES]
Scorer = Literal[SCORERS]
EvictAt = Literal[EVICT_AT]
Preset = Literal[tuple(PRESETS)]
Kernels = Literal[KERNEL_MODES]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DecodeMode = Literal[DECODE_MODES]
PrefillLogits = Literal["last", "all"]
PREFILL_LOGITS_HELP = ("The prefill's output head: on the last prompt position only (last, as generate() does: TTFT "
                       "and peak memory are the model's), or on every prompt position (all: what lola-bench measured "
                       "before this flag existed; keeps the cell ids of sweeps begun then, so they resume).")
DECODE_HELP = ("How decode steps run: graphed (the prefilled cache copied into a static one, one decode step "
               "captured as a CUDA graph and replayed per token, LoLA's chunk-boundary merge eagerly between "
               "replays; off CUDA the same step runs eagerly, and the row's decode_impl says so and why), eager (one "
               "model forward per token through the variant's own cache, as generate() runs), auto (graphed on "
               "CUDA, eager elsewhere). Graphed decode gives the eager tokens in float32; in bfloat16 its rounding "
               "differs slightly and can flip a near-tied token.")

INTS = "INTEGER[,INTEGER...]"     # the --help metavar of an integer list flag (repeat it or comma-separate)
NAMES = "TEXT[,TEXT...]"


def split_list(values) -> tuple[str, ...]:
    """A list flag's values, repeated and/or comma-separated (``--x a,b --x c``), in order, duplicates kept."""
    if isinstance(values, str):
        values = [values]
    return tuple(x.strip() for v in values or () for x in str(v).split(",") if x.strip())


def int_list(flag: str, values) -> tuple[int, ...]:
    """An integer list flag (repeated and/or comma-separated); a one-line UserError naming the flag otherwise."""
    try:
        return tuple(int(x) for x in split_list(values))
    except ValueError:
        raise UserError(f"{flag}: expected integers (comma-separated or repeated), got "
                        f"{', '.join(str(v) for v in values)}") from None

ModelOpt = Annotated[str, typer.Option("--model", help="Model spec: smollm2-135m (embedded default), random:<preset> "
                                       "(tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b), a .gguf path, a local model "
                                       "directory, or a Hugging Face hub id (online).")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="<auto|cpu|cuda|cuda:N>",
                                        help="auto | cpu | cuda | cuda:N (a CUDA device index).")]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | "
                                         "bfloat16 | float16.")]
WindowOpt = Annotated[Optional[int], typer.Option("--window", help="eta: local sliding window (exact softmax). With "
                                                  "the default cadence (chunk = eta) a query sees between eta+1 and "
                                                  "2*eta recent keys. Default: the preset's, else 64.")]
CombineOpt = Annotated[Optional[Combine], typer.Option("--combine", help="How softmax and linear parts mix: lola "
                                                  "(the LoLA authors' formula), calibrated (ours: unshifted exp vs "
                                                  "exp(factor) phi.phi), lolcats (LoLCATs' window-factor form), gated, "
                                                  "normalized. Default: the checkpoint's formula, else lola.")]
SinksOpt = Annotated[Optional[int], typer.Option("--sinks", help="Attention sinks: the first N positions always "
                                              "kept exact, on top of lambda (never folded into the linear state). "
                                              "Default: the checkpoint's value (what it was trained with), else 0.")]
GqaOpt = Annotated[Optional[Gqa], typer.Option("--gqa", help="grouped: K/V and selection once per KV head; expanded: "
                                               "per query head (the authors' layout). Default: the checkpoint's, else "
                                               "expanded.")]
PresetOpt = Annotated[Optional[Preset], typer.Option("--preset", help="Named settings: paper (the LoLA authors' "
                                                 "formula, per-query-head selection, chunk = window, no sinks), "
                                                 "paper-llama3.1-8b (+ window 64, lambda 64), paper-llama3.2-1b "
                                                 "(+ window 256, lambda 256): their eval configs. Flags that "
                                                 "contradict the preset are refused.")]
EVICT_AT_HELP = ("When --attn evict chooses the pairs it keeps: boundary (default: at every chunk boundary while the "
                 "prompt is read, LoLA's cadence; reported as H2O-style / SnapKV-style) or prompt_end (the published "
                 "SnapKV / H2O protocol: the prompt runs with full attention, then the cache is compressed once to "
                 "window + lambda pairs by full-attention scores; reported as SnapKV / H2O). prompt_end's peak memory "
                 "is the full KV cache during the prefill; the cache memory reported (cache MiB, tiers) is the "
                 "compressed cache held afterwards plus every generated token: prompt_end never evicts while "
                 "decoding (as SnapKV's code), boundary keeps evicting at chunk boundaries.")
ChunkOpt = Annotated[Optional[int], typer.Option("--chunk", help="Update cadence in tokens (default: = window).")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads for this run (default: "
                                                 "what torch picks; 1 is cheapest on a shared machine). Recorded "
                                                 "in config.json.")]
CkptOpt = Annotated[Optional[str], typer.Option("--lola-ckpt", help="Linearization checkpoint (feature maps + window "
                                               "factors [+ LoRA]): a lola-bench directory, a LoLCATs/LoLA file "
                                               "(.pt/.bin/.safetensors, wrapped or flat), hf://ORG/NAME/FILE "
                                               "(online), or A,B (a distill file and an ft-lora file); 'none' "
                                               "disables the shipped default.")]

_SHARED = [  # (name, annotation, default)
    ("attn", Annotated[list[str], typer.Option("--attn", metavar=NAMES, help="Attention variant(s): full "
                                               "(softmax), base (window + linear, lambda=0), lola, evict (KV "
                                               "eviction: window + scored cache, the rest dropped). Repeat or "
                                               "comma-separate to compare in one run (--attn full,lola).")], None),
    ("preset", PresetOpt, None),
    ("window", WindowOpt, None),
    ("lam", Annotated[Optional[int], typer.Option("--lambda", help="lambda: sparse global cache size (pairs kept by "
                                                  "the scorer). Default: the preset's, else 512.")], None),
    ("scorer", Annotated[Scorer, typer.Option("--scorer", help="Which evicted pairs stay cached: sre (self-recall "
                                           "error, default), sre_relative (SRE / ||v||, an ablation), random, "
                                           "key_norm, attention, recency, sink, snapkv.")], "sre"),
    ("feature_map", Annotated[Optional[FeatureMap], typer.Option("--feature-map", help="phi for the linear state: "
                                                          "hedgehog "
                                                          "(learned; default when a checkpoint is available), "
                                                          "hedgehog-identity, elu, relu, taylor.")], None),
    ("combine", CombineOpt, None),
    ("evict_at", Annotated[EvictAt, typer.Option("--evict-at", help=EVICT_AT_HELP)], "boundary"),
    ("sinks", SinksOpt, None),
    ("gqa", GqaOpt, None),
    ("chunk", ChunkOpt, None),
    ("model", ModelOpt, "smollm2-135m"),
    ("device", DeviceOpt, "auto"),
    ("dtype", DtypeOpt, "auto"),
    ("lola_ckpt", CkptOpt, None),
    ("threads", ThreadsOpt, None),
    ("kernels", Annotated[Optional[Kernels], typer.Option("--kernels", help="LoLA implementation: auto, torch or "
                                                      "triton (overrides the same flag given before the command).")],
     None),
    ("out", Annotated[Optional[str], typer.Option("--out", help="Run directory (default results/<command>/<model>-"
                                                  "<time>).")], None),
    ("overwrite", Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory (only one "
                                               "lola-bench wrote).")], False),
]


@dataclass(frozen=True)
class RunOptions:
    command: str
    model: ModelSettings
    attn: tuple[str, ...]
    lola: LolaFlags
    kernels: str
    out: str | None
    overwrite: bool
    threads: int | None = None


def kernels_flag() -> str:
    """The root ``--kernels`` flag (or $LOLA_BENCH_KERNELS) of this invocation; 'auto' outside the CLI."""
    ctx = click.get_current_context(silent=True)
    return (ctx.find_root().params.get("kernels") if ctx else None) or "auto"


def _kernels(value: str | None) -> str:
    from ..settings import check_kernels

    return check_kernels(value) if value is not None else kernels_flag()


def apply_threads(threads: int | None) -> None:
    """--threads: torch.set_num_threads before any work, and the value in force recorded for provenance."""
    from ..api import set_threads
    from ..provenance import mark_threads

    set_threads(threads)
    mark_threads()


def run_options(command: str, attn_default: tuple[str, ...] = ("full", "base", "lola")):
    """Decorator: add the shared flags to a typer command; the command receives ``opts: RunOptions``."""
    def deco(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name != "opts"]
        names = {p.name for p in own}
        shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, annotation=a,
                                    default=list(attn_default) if n == "attn" else d)
                  for n, a, d in _SHARED if n not in names]

        @functools.wraps(fn)
        def wrapper(**kw):
            vals = {n: kw.pop(n) for n, _, _ in _SHARED if n not in names}
            from .notices import model_alias

            vals["model"] = model_alias(vals["model"])
            seed = kw.get("seed", 0)
            opts = RunOptions(
                command=command, model=ModelSettings(vals["model"], vals["device"], vals["dtype"], vals["lola_ckpt"]),
                attn=split_list(vals["attn"]),
                lola=LolaFlags(window=vals["window"], sparse=vals["lam"], scorer=vals["scorer"],
                               feature_map=vals["feature_map"], combine=vals["combine"], sinks=vals["sinks"],
                               gqa=vals["gqa"], chunk=vals["chunk"], seed=seed, preset=vals["preset"],
                               evict_at=vals["evict_at"]),
                kernels=_kernels(vals["kernels"]), out=vals["out"], overwrite=vals["overwrite"],
                threads=vals["threads"])
            apply_threads(opts.threads)
            return fn(opts=opts, **kw)

        del wrapper.__wrapped__
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper
    return deco
