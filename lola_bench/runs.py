"""Shared plumbing for commands that write a run directory: plan the run, default paths, config.json."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from .attention.kernels import kernel_env
from .distributed import world
from .errors import UserError
from .paths import results_dir
from .provenance import provenance, threads_in_force
from .records import RunDir
from .settings import (
    ATTN_MODES,
    AttentionSettings,
    LolaFlags,
    ModelSettings,
    check_evict_at,
    check_kernels,
    lola_config_and_sources,
)


def default_run_dir(command: str, model: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return results_dir() / command / f"{safe}-{stamp}"


def resolve_variants(modes, flags: LolaFlags, model: ModelSettings,
                     kernels: str = "auto") -> tuple[str | None, list[AttentionSettings]]:
    """(checkpoint or None, the attention variants to evaluate, deduplicated in the given order): the checkpoint
    resolved for the model and feature map, then flags > preset > its metadata > defaults (settings.resolve_lola).
    Runs of full / evict variants only resolve no checkpoint (eviction runs the unmodified model); next to base or
    lola, an evict variant takes the same window / sinks / GQA settings but never the checkpoint's weights."""
    from .models.checkpoint import read_meta, resolve_checkpoint

    for m in modes:
        if m not in ATTN_MODES:
            raise UserError(f"unknown --attn {m!r}: choose {', '.join(ATTN_MODES)}")
    evict_at = check_evict_at(flags.evict_at, modes)
    if all(m in ("full", "evict") for m in modes):  # eviction has no feature map: no checkpoint to resolve
        ckpt, fmap = None, flags.feature_map or "hedgehog-identity"
    else:
        ckpt, fmap = resolve_checkpoint(model, flags.feature_map)
    if any(m in ("base", "lola") for m in modes):
        from .models.compat import check_weights

        check_weights(fmap, ckpt)
    cfg, origin = lola_config_and_sources(flags, fmap, read_meta(ckpt) if ckpt else None, ckpt)
    return ckpt, [AttentionSettings.build(m, cfg, check_kernels(kernels), origin, evict_at)
                  for m in dict.fromkeys(modes)]


# Commands that score every token inside one forward call (no generation after a prompt): there, eviction after the
# prompt (--evict-at prompt_end) would never evict, every evict variant would be full attention.
NO_PROMPT_END = ("perplexity", "commonsense")


def plan_run(opts):
    """Resolve the variants (flags + checkpoint metadata) and claim the run directory, before any model work.
    ``opts``: a cli.options.RunOptions. Returns (checkpoint or None, variants, RunDir)."""
    from .models.loading import resolve_device

    if opts.command in NO_PROMPT_END and opts.lola.evict_at == "prompt_end":
        raise UserError(f"--evict-at prompt_end compresses the cache after the prompt, but {opts.command} scores "
                        "every token inside one forward call, so eviction would never happen (full attention): use "
                        "--evict-at boundary")

    ckpt, variants = resolve_variants(opts.attn, opts.lola, opts.model, opts.kernels)
    resolve_device(opts.model.device)    # under a launcher: each rank's device, before the first collective call
    path = world().broadcast(opts.out or default_run_dir(opts.command, opts.model.spec))  # rank 0's timestamp
    run = RunDir(path, overwrite=opts.overwrite)
    return ckpt, variants, run


def run_config(command: str, model: ModelSettings, loaded, variants, extra: dict) -> dict:
    """config.json of a run: the command, the model as loaded, the variants, the task settings (``extra``, with
    ``lola_checkpoint``: what --lola-ckpt resolved to), what that checkpoint says about itself, and provenance."""
    ckpt = extra.get("lola_checkpoint")
    if ckpt:
        from .models.checkpoint import read_meta

        extra = {**extra, "lola_checkpoint_meta": read_meta(ckpt)}
    return {
        "command": command,
        "model": {**model.to_dict(), "source": loaded.source, "kind": loaded.kind, "resolved_device": loaded.device,
                  "resolved_dtype": loaded.dtype, "max_context": loaded.max_context},
        "attention": [v.to_dict() for v in variants],
        "kernel_env": kernel_env(),
        "threads": threads_in_force(),
        "processes": world().describe(),
        **extra,
        "provenance": provenance(loaded.device),
    }
