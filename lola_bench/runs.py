"""Shared plumbing for commands that write a run directory: plan the run, default paths, config.json."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from .attention.kernels import kernel_env
from .paths import results_dir
from .provenance import provenance
from .records import RunDir
from .settings import ModelSettings, resolve_variants


def default_run_dir(command: str, model: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return results_dir() / command / f"{safe}-{stamp}"


def plan_run(opts):
    """Resolve the variants (flags + checkpoint metadata) and claim the run directory, before any model work.
    ``opts``: a cli.options.RunOptions. Returns (checkpoint or None, variants, RunDir)."""
    ckpt, variants = resolve_variants(opts.attn, opts.lola, opts.model, opts.kernels)
    run = RunDir(opts.out or default_run_dir(opts.command, opts.model.spec), overwrite=opts.overwrite)
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
        **extra,
        "provenance": provenance(loaded.device),
    }
