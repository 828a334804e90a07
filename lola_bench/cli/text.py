"""perplexity and linearize: parse the flags, call the library, print."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from ..errors import UserError
from .app import app
from .checks import at_least, check_ckpt_out, check_model, check_text, check_training_data
from .display import Bar, console, print_frame, user_errors
from .options import DeviceOpt, ModelOpt, RunOptions, WindowOpt, run_options


@app.command()
@user_errors
@run_options("perplexity")
def perplexity(
    opts: RunOptions,
    text: Annotated[Optional[str], typer.Option("--text", help="Held-out text file (default: wikitext-2 test from "
                                                "the data mirror).")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per evaluated sequence: the text is cut into "
                                         "non-overlapping sequences of this length, each scored on its own (not "
                                         "LoLA's --window, eta).")] = 1024,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Evaluate only the first N tokens.")]
    = None,
):
    """Perplexity on held-out text for full, base and LoLA attention (is the linearization sound?)."""
    from ..evals.perplexity import PerplexitySettings, run_perplexity
    from ..models.loading import load_model
    from ..paths import data_dir
    from ..provenance import device_label
    from ..runs import plan_run, run_config

    if text is None:
        d = data_dir()
        text = str(d / "text" / "wikitext-2-raw-wiki.test.raw") if d else None
    if not text or not os.path.isfile(text):
        raise UserError(f"text file not found: {text} (pass --text)")
    if seq_len < 2:
        raise UserError(f"--seq-len must be >= 2, got {seq_len}")
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"--max-tokens must be >= 2, got {max_tokens}")
    check_text(text)
    check_model(opts.model, ("--seq-len", [seq_len]))
    ckpt, variants, run = plan_run(opts)
    ps = PerplexitySettings(text, seq_len, max_tokens)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    from .notices import add_checkpoint_column, print_checkpoint_notice

    print_checkpoint_notice(ckpt, variants)
    with Bar("perplexity", len(variants)) as step:
        df = run_perplexity(loaded, variants, ps, ckpt=ckpt, device_label=device_label(loaded.device), progress=step)
    df = add_checkpoint_column(df, ckpt)
    with run:
        run.write_json("config.json", run_config("perplexity", opts.model, loaded, variants, {
            "perplexity": ps.to_dict(), "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Perplexity")
    print_frame(df, "Perplexity", ["attn", "window", "lambda", "feature_map", "perplexity", "implementation"])
    console.print(f"results: {run.path}")


@app.command()
@user_errors
def linearize(
    data: Annotated[str, typer.Option("--data", help="Training text: comma-separated .txt/.raw/.jsonl/Alpaca .json "
                                      "files or directories (or a hub dataset id when online). Never the RULER "
                                      "essays.")],
    out: Annotated[str, typer.Option("--out", help="Checkpoint directory (lola.safetensors + lola.json + loss.png; "
                                     "train_state/ for resuming).")],
    model: ModelOpt = "smollm2-135m",
    tokens: Annotated[int, typer.Option("--tokens", help="Attention-transfer training tokens (stage 1).")] = 1_000_000,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Packed sequence length (the shipped "
                                     "checkpoint's 4096: trained at 1024 it fell apart at 4K).")] = 4096,
    window: WindowOpt = 64,
    feature_map: Annotated[str, typer.Option("--feature-map", help="Feature map to train (hedgehog).")] = "hedgehog",
    combine: Annotated[str, typer.Option("--combine", help="Formula trained for: calibrated | lolcats | gated | "
                                         "normalized (see README).")] = "calibrated",
    lr: Annotated[float, typer.Option("--lr", help="Stage-1 AdamW learning rate.")] = 1e-2,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="Stage 2: LoRA rank on q/k/v/o (0 = skip).")] = 0,
    sinks: Annotated[int, typer.Option("--sinks", help="Attention sinks: train with the first N positions in the "
                                       "exact softmax part (never linear); inference then pins them in the "
                                       "sparse cache. 0 = none (the shipped checkpoint's: 4).")] = 4,
    lora_tokens: Annotated[Optional[int], typer.Option("--lora-tokens", help="Stage-2 tokens (default: --tokens)."
                                                       )] = None,
    seed: Annotated[int, typer.Option("--seed", help="Data order seed.")] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between resumable training "
                                                  "checkpoints.")] = 20,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (1 is fastest on a busy "
                                                   "2-core machine).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from OUT/train_state when an "
                                         "interrupted run left it (default); --no-resume starts over.")] = True,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="After training, fit one global "
                                            "offset of the window factors (the linear memory's weight) by next-token "
                                            "loss on the last quarter of --seq-len training sequences run through "
                                            "LoLA (lambda=512); on by default, as for the shipped checkpoint. Rerun "
                                            "a finished command with it to calibrate only.")]
    = True,
    device: DeviceOpt = "auto",
):
    """Make a linearized model (LoLCATs attention transfer [+ LoRA]): the base LoLA runs on.

    The defaults are the recipe of the shipped checkpoint (data/smollm2-135m-lola): --seq-len 4096, --sinks 4,
    --combine calibrated, --window 64, calibrated after training (--no-calibrate to skip)."""
    import torch

    from ..models.linearize import LinearizeSettings
    from ..models.linearize import linearize as run_linearize
    from ..models.loading import load_model
    from ..settings import ModelSettings

    at_least(tokens=(tokens, 1), seq_len=(seq_len, 2), window=(window, 1), lora_rank=(lora_rank, 0),
              sinks=(sinks, 0), lora_tokens=(lora_tokens, 1), seed=(seed, 0), checkpoint_every=(checkpoint_every, 1),
              threads=(threads, 1))
    if not lr > 0:
        raise UserError(f"--lr must be > 0, got {lr}")
    if tokens < seq_len:
        raise UserError(f"--tokens must be at least --seq-len ({seq_len})")
    paths = [p.strip() for p in data.split(",") if p.strip()]
    from .notices import model_alias

    model = model_alias(model)
    LinearizeSettings(data_paths=tuple(paths), tokens=tokens, seq_len=seq_len, window=window,
                      feature_map=feature_map, combine=combine, lr=lr, lora_rank=lora_rank, lora_tokens=lora_tokens,
                      sinks=sinks, seed=seed, checkpoint_every=checkpoint_every)   # the library's own checks
    check_training_data(paths)
    check_ckpt_out(out)
    check_model(ModelSettings(model, device, "float32", None), ("--seq-len", [seq_len]))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(model, device, "float32")
    with Bar("linearize", None) as bar:
        def step(i, total, seen, loss, tps):
            bar.set(i, total, f"loss {loss:.1f}, {tps:.0f} tok/s, {seen} tok")

        summary = run_linearize(loaded, paths, tokens=tokens, seq_len=seq_len, window=window, feature_map=feature_map,
                                combine=combine, lr=lr, lora_rank=lora_rank, lora_tokens=lora_tokens, seed=seed,
                                sinks=sinks,
                                out=out, resume=resume, progress=step, checkpoint_every=checkpoint_every,
                                calibrate=calibrate,
                                calibrate_progress=lambda i, n: bar.set(i, n, "calibrating"))
    console.print(f"checkpoint: {out}  (complete: {summary.get('complete', True)})")
    cal = summary.get("linear_weight_calibration")
    if cal:
        console.print(f"linear-weight offset {cal['offset']:g}; tail perplexity by offset: "
                      + ", ".join(f"{g:g}: {v:.3f}" for g, v in zip(cal["grid"], cal["tail_perplexity"])))
