"""info, ruler, commonsense, speed, perplexity, linearize: parse the flags, call the library, print."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..errors import UserError
from .app import app
from .display import Bar, console, err_console, print_frame, user_errors
from .options import DeviceOpt, ModelOpt, RunOptions, WindowOpt, run_options


@app.command()
@user_errors
def info(device: DeviceOpt = "auto"):
    """Versions, device, cache directory, embedded model and data directories."""
    from ..models.loading import (
        EMBEDDED_INSTALL_HINT,
        dequantized_cache_path,
        embedded_available,
        embedded_gguf_path,
        resolve_device,
    )
    from ..paths import cache_dir, data_dir
    from ..provenance import device_label, git_info, package_versions

    t = Table(title="lola-bench", show_header=False)
    for k, v in package_versions().items():
        t.add_row(k, str(v))
    g = git_info()
    t.add_row("git", f"{g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}")
    label = device_label(resolve_device(device))
    t.add_row("device", label)
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
        t.add_row("data sets", ", ".join(sorted(p.name for p in d.iterdir() if p.is_dir())))
    t.add_row("triton kernels", "TRITON_INTERPRET=1" if os.environ.get("TRITON_INTERPRET") == "1" else
              ("CUDA" if label.startswith("GPU") else "off (CPU: torch path)"))
    console.print(t)


def _check_model(model, max_ctx: tuple[str, list[int]] | None = None) -> None:
    """The model flags, before anything is written or loaded: the spec names something loadable (a GGUF's magic
    bytes, a local directory's config.json and weights), the device and dtype exist, and ``max_ctx`` = (flag,
    values) fits the model's maximum context when its configuration tells it without loading weights."""
    from ..models.loading import check_model_spec, model_config_max_context, resolve_device, resolve_dtype

    resolve_dtype(model.dtype, resolve_device(model.device))
    check_model_spec(model.spec)
    limit = model_config_max_context(model.spec)
    if max_ctx and limit:
        flag, values = max_ctx
        over = [c for c in values if c > limit]
        if over:
            raise UserError(f"{flag} {over[0]} exceeds the model's maximum context of {limit} tokens")


def _at_least(**flags) -> None:
    """``_at_least(samples=(value, minimum), ...)``: one-line UserError for the first flag below its minimum
    (None values are skipped: the flag was not given)."""
    for name, (value, minimum) in flags.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and v < minimum:
                raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def _exactness_note(variants) -> str:
    from ..report import exactness_note

    return exactness_note([v.lola for v in variants])


@app.command()
@user_errors
@run_options("ruler")
def ruler(
    opts: RunOptions,
    ctx: Annotated[list[int], typer.Option("--ctx", help="Context length(s) in tokens (prompt + generated). Repeat "
                                           "for several.")] = [4096],
    task: Annotated[list[str], typer.Option("--task", help="RULER task(s): niah_single_1..3, niah_multikey_1..3, "
                                            "niah_multivalue, niah_multiquery, vt, cwe, fwe, passkey, "
                                            "niah_single_1_lmeval, qa_1, qa_2, or all.")] = ["niah_single_1"],
    samples: Annotated[int, typer.Option("--samples", help="Samples per task and context (needle depths evenly "
                                         "spaced).")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed for prompts (same seed, byte-identical prompts).")] = 0,
    essay_path: Annotated[Optional[str], typer.Option("--essay-path", envvar="LOLA_BENCH_ESSAY",
                                                      help="RULER essay JSON or a directory of .txt essays "
                                                      "(essay-haystack tasks).")] = None,
    qa_path: Annotated[Optional[str], typer.Option("--qa-path", envvar="LOLA_BENCH_QA",
                                                   help="SQuAD/HotpotQA file for qa_1/qa_2.")] = None,
    chat_template: Annotated[Optional[bool], typer.Option("--chat-template/--no-chat-template",
                                                          help="Force the tokenizer's chat template on or off "
                                                          "(default: on for instruct models).")] = None,
):
    """RULER needle-in-a-haystack accuracy with TTFT, decode latency and memory, per attention variant."""
    from ..evals.ruler_bench import RulerSettings, expand_tasks, run_ruler, validate
    from ..models.loading import load_model
    from ..provenance import device_label
    from ..runs import plan_run, run_config
    from ..settings import default_essay_path

    _at_least(seed=(seed, 0))
    try:
        tasks = tuple(expand_tasks(task))
    except ValueError as e:
        raise UserError(str(e)) from None
    rs = RulerSettings(tasks=tasks, ctxs=tuple(ctx), samples=samples, seed=seed,
                       essay_path=default_essay_path(essay_path), qa_path=qa_path, chat_template=chat_template)
    validate(rs, 0)                       # flags and haystack data (parsed), before anything is written
    _check_model(opts.model, ("--ctx", list(ctx)))
    ckpt, variants, run = plan_run(opts)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    validate(rs, loaded.max_context)
    with Bar("ruler", len(variants) * len(rs.tasks) * len(rs.ctxs) * samples) as step:
        result = run_ruler(loaded, variants, rs, ckpt=ckpt, device_label=device_label(loaded.device), progress=step)
    with run:
        run.write_json("config.json", run_config("ruler", opts.model, loaded, variants, {
            "ruler": {**rs.to_dict(), "chat_template_applied": result.chat_template}, "lola_checkpoint": ckpt}))
        run.append_jsonl("predictions.jsonl", result.predictions)
        run.write_table("summary", result.summary, title="RULER", notes=_exactness_note(variants))
        from ..report import depth_heatmaps

        depth_heatmaps(result.predictions, run.stage)
    print_frame(result.summary, f"RULER on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "task", "ctx", "n", "accuracy", "ttft_s", "decode_ms_per_token", "peak_mem_mib", "cache_mib",
                 "full_kv_mib", "implementation"])
    console.print(f"results: {run.path}")


@app.command()
@user_errors
@run_options("commonsense")
def commonsense(
    opts: RunOptions,
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated: piqa, arc_easy, arc_challenge, hellaswag, "
                                       "winogrande, mmlu (5-shot by default).")]
    = "piqa,arc_easy,arc_challenge,hellaswag,winogrande",
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", envvar="LOLA_BENCH_DATA",
                                                    help="Offline mirror of the task data (switches to the local task "
                                                    "YAMLs in tasks/commonsense/). Default: ../shared/data beside the "
                                                    "checkout if present, else lm-eval's official (online) tasks.")]
    = None,
    online: Annotated[bool, typer.Option("--online", help="Use lm-eval's official task names (hub data) even if a "
                                         "local mirror exists.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Items per task (per subject for mmlu).")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples (default 0; mmlu "
                                                       "5).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="lm-eval batch size.")] = 1,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse the tasks an interrupted run with the "
                                         "same --out and settings finished, and the answered requests of the task "
                                         "it was in (kept in a hidden .<out>.resume folder beside it until the run "
                                         "completes; lm-eval's request cache there is unpickled, so it is reused "
                                         "only if its sha256 matches the one recorded when it was written). "
                                         "--no-resume deletes that folder first.")] = True,
):
    """Zero-shot commonsense suites through lm-eval for full, base and LoLA attention.

    Every (variant, task) result is saved as soon as it finishes, and every answered request of the task in
    progress is cached (lm-eval's request cache): rerun the same command with the same --out after an
    interruption and only the unfinished tasks are evaluated, the interrupted one from where it stopped.
    """
    from ..evals.commonsense import resolve_tasks
    from ..evals.commonsense.run import CommonsenseSettings, run_commonsense_variants
    from ..models.checkpoint import checkpoint_fingerprint
    from ..models.loading import load_model
    from ..paths import data_dir as find_data
    from ..provenance import device_label
    from ..records import ResumeStore
    from ..report import COMPARISON_NOTE, commonsense_comparison
    from ..runs import plan_run, run_config

    for name, value, minimum in (("--limit", limit, 1), ("--num-fewshot", num_fewshot, 0), ("--batch-size",
                                                                                           batch_size, 1)):
        if value is not None and value < minimum:
            raise UserError(f"{name} must be >= {minimum}, got {value}")
    ddir = None if online else find_data(data_dir)
    if data_dir and not online and not ddir.is_dir():
        raise UserError(f"--data-dir {data_dir} does not exist")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        resolve_tasks(names, str(ddir) if ddir else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_model(opts.model)
    ckpt, variants, run = plan_run(opts)
    settings = CommonsenseSettings(tuple(names), str(ddir) if ddir else None, limit, num_fewshot, batch_size)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    store = ResumeStore(run.path)
    if not resume:
        store.clear()
    key = {"model": opts.model.to_dict(), "resolved_dtype": str(loaded.dtype), "resolved_device": loaded.device,
           "checkpoint": checkpoint_fingerprint(ckpt) if ckpt else None, "data_dir": settings.data_dir, "limit": limit,
           "num_fewshot": num_fewshot, "batch_size": batch_size}
    with Bar("commonsense", len(variants) * len(names)) as bar:
        res = run_commonsense_variants(loaded, variants, settings, ckpt=ckpt, store=store, resume_key=key,
                                       device_label=device_label(loaded.device),
                                       progress=lambda done, total, d: bar.set(done, total, d),
                                       notice=lambda m: err_console.print(f"[yellow]{m}[/]", highlight=False))
    for mode, reused in res.reused.items():
        console.print(f"{mode}: reused {', '.join(reused)} from the interrupted run in {store.path}")
    if res.lengths_error:
        console.print(f"[yellow]request lengths unavailable ({res.lengths_error})[/]")
    notes = " ".join(filter(None, [
        _exactness_note(variants),
        "`beyond_exact_span`: share of the task's requests longer than that span (only they can score differently "
        "from full attention)." if not res.lengths_error else "",
        "HellaSwag offline uses the preprocessed full validation set: close to, not identical with, lm-eval's."
        if ddir else ""]))
    with run:
        run.write_json("config.json", run_config("commonsense", opts.model, loaded, variants, {
            "commonsense": settings.to_dict(), "lola_checkpoint": ckpt}))
        run.write_json("lm_eval_results.json", res.raw)
        run.write_table("summary", res.summary, title="Commonsense (lm-eval)", notes=notes)
        if len(variants) > 1:
            run.write_table("comparison", commonsense_comparison(res.summary),
                            title="Commonsense: variants side by side", notes=COMPARISON_NOTE + " " + notes)
    store.clear()
    print_frame(res.summary, f"lm-eval on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "task", "metric", "value", "stderr", "n", "implementation"])
    console.print(f"results: {run.path}")


@app.command()
@user_errors
@run_options("speed")
def speed(
    opts: RunOptions,
    ctx: Annotated[list[int], typer.Option("--ctx", help="Prompt length(s) in tokens.")] = [1024, 2048, 4096],
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per point (median reported, after one "
                                         "warm-up).")] = 3,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Decode steps timed after each prefill.")] = 16,
):
    """Prefill (TTFT) and decode latency on random prompts: full attention vs LoLA."""
    from ..evals.speed import run_speed
    from ..models.loading import load_model
    from ..provenance import device_label
    from ..runs import plan_run, run_config

    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    if decode_tokens < 0:
        raise UserError(f"--decode-tokens must be >= 0, got {decode_tokens}")
    for c in ctx:
        if c < 1:
            raise UserError(f"--ctx must be >= 1, got {c}")
    _check_model(opts.model, ("--ctx", list(ctx)))
    ckpt, variants, run = plan_run(opts)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    for c in ctx:
        if loaded.max_context and c > loaded.max_context:
            raise UserError(f"--ctx {c} outside 1..{loaded.max_context} (the model's maximum context)")
    with Bar("speed", len(variants) * len(ctx) * repeats) as step:
        df = run_speed(loaded, variants, list(ctx), repeats=repeats, decode_tokens=decode_tokens, ckpt=ckpt,
                       device_label=device_label(loaded.device), progress=step)
    with run:
        run.write_json("config.json", run_config("speed", opts.model, loaded, variants, {
            "speed": {"ctx": list(ctx), "repeats": repeats, "decode_tokens": decode_tokens}, "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Prefill and decode latency")
    print_frame(df, f"Latency on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "ctx", "ttft_s", "ttft_vs_full", "decode_ms_per_token", "peak_mem_mib", "implementation"])
    console.print(f"results: {run.path}")


def _check_text(path: str) -> None:
    """A perplexity text: readable UTF-8 with some non-blank text."""
    try:
        with open(path, encoding="utf-8") as f:
            blank = not any(line.strip() for line in f)
    except UnicodeDecodeError:
        raise UserError(f"text file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"cannot read text file {path}: {e.strerror or e}") from None
    if blank:
        raise UserError(f"text file {path} is empty (no text to score)")


@app.command()
@user_errors
@run_options("perplexity")
def perplexity(
    opts: RunOptions,
    text: Annotated[Optional[str], typer.Option("--text", help="Held-out text file (default: wikitext-2 test from "
                                                "the data mirror).")] = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Window length (non-overlapping).")] = 1024,
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
    _check_text(text)
    _check_model(opts.model, ("--seq-len", [seq_len]))
    ckpt, variants, run = plan_run(opts)
    ps = PerplexitySettings(text, seq_len, max_tokens)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    with Bar("perplexity", len(variants)) as step:
        df = run_perplexity(loaded, variants, ps, ckpt=ckpt, device_label=device_label(loaded.device), progress=step)
    with run:
        run.write_json("config.json", run_config("perplexity", opts.model, loaded, variants, {
            "perplexity": ps.to_dict(), "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Perplexity")
    print_frame(df, "Perplexity", ["attn", "window", "lambda", "feature_map", "perplexity", "implementation"])
    console.print(f"results: {run.path}")


def _check_training_data(paths: list[str]) -> None:
    """linearize --data: every file exists, parses, and the whole holds some text (hub ids are checked when
    read)."""
    from ..data.text_data import read_sources

    try:
        sources = read_sources(paths)
    except UnicodeDecodeError as e:
        raise UserError(f"training data is not UTF-8 text: {e.reason}") from None
    except OSError as e:
        raise UserError(f"cannot read training data {e.filename or ''}: {e.strerror or e}") from None
    if not any(d.strip() for _, docs in sources for d in docs):
        raise UserError(f"the training data ({', '.join(paths)}) holds no text")


def _check_ckpt_out(out: str) -> None:
    """linearize --out: a new directory, or one holding a (partial) checkpoint (it resumes there); never the
    working directory, its parents, home, a git checkout, a file, or someone else's non-empty directory."""
    from pathlib import Path

    from ..records import MARKER, _is_protected, probe_writable

    path = Path(out).expanduser()
    why = _is_protected(path)
    if why:
        raise UserError(f"--out {out} {why}: give a new or checkpoint directory")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not any(
            (path / n).exists() for n in ("lola.json", "lola.safetensors", "train_state", MARKER)):
        raise UserError(f"--out {out} is a non-empty directory that holds no lola-bench checkpoint: refusing "
                        "to write into it")
    probe_writable(path if path.is_dir() else path.parent)


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
    seq_len: Annotated[int, typer.Option("--seq-len", help="Packed sequence length.")] = 1024,
    window: WindowOpt = 64,
    feature_map: Annotated[str, typer.Option("--feature-map", help="Feature map to train (hedgehog).")] = "hedgehog",
    combine: Annotated[str, typer.Option("--combine", help="Formula trained for: calibrated | lolcats | gated | "
                                         "normalized (see README).")] = "calibrated",
    lr: Annotated[float, typer.Option("--lr", help="Stage-1 AdamW learning rate.")] = 1e-2,
    lora_rank: Annotated[int, typer.Option("--lora-rank", help="Stage 2: LoRA rank on q/k/v/o (0 = skip).")] = 0,
    sinks: Annotated[int, typer.Option("--sinks", help="Attention sinks: train with the first N positions in the "
                                       "exact softmax part (never linear); inference then pins them in the "
                                       "sparse cache. 0 = none.")] = 0,
    lora_tokens: Annotated[Optional[int], typer.Option("--lora-tokens", help="Stage-2 tokens (default: --tokens)."
                                                       )] = None,
    seed: Annotated[int, typer.Option("--seed", help="Data order seed.")] = 0,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Steps between resumable training "
                                                  "checkpoints.")] = 20,
    threads: Annotated[Optional[int], typer.Option("--threads", help="torch CPU threads (1 is fastest on a busy "
                                                   "2-core machine).")] = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Start over even if OUT/train_state exists.")]
    = False,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="After training, fit one global offset of the "
                                            "window factors (the linear memory's weight) by next-token loss on the "
                                            "last quarter of --seq-len training sequences run through LoLA "
                                            "(lambda=512). Rerun a finished command with it to calibrate only.")]
    = False,
    device: DeviceOpt = "auto",
):
    """Make a linearized model (LoLCATs attention transfer [+ LoRA]): the base LoLA runs on."""
    import torch

    from ..models.linearize import LinearizeSettings
    from ..models.linearize import linearize as run_linearize
    from ..models.loading import load_model
    from ..settings import ModelSettings

    _at_least(tokens=(tokens, 1), seq_len=(seq_len, 2), window=(window, 1), lora_rank=(lora_rank, 0),
              sinks=(sinks, 0), lora_tokens=(lora_tokens, 1), seed=(seed, 0), checkpoint_every=(checkpoint_every, 1),
              threads=(threads, 1))
    if not lr > 0:
        raise UserError(f"--lr must be > 0, got {lr}")
    if tokens < seq_len:
        raise UserError(f"--tokens must be at least --seq-len ({seq_len})")
    paths = [p.strip() for p in data.split(",") if p.strip()]
    LinearizeSettings(data_paths=tuple(paths), tokens=tokens, seq_len=seq_len, window=window,
                      feature_map=feature_map, combine=combine, lr=lr, lora_rank=lora_rank, lora_tokens=lora_tokens,
                      sinks=sinks, seed=seed, checkpoint_every=checkpoint_every)   # the library's own checks
    _check_training_data(paths)
    _check_ckpt_out(out)
    _check_model(ModelSettings(model, device, "float32", None), ("--seq-len", [seq_len]))
    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(model, device, "float32")
    with Bar("linearize", None) as bar:
        def step(i, total, seen, loss, tps):
            bar.set(i, total, f"loss {loss:.1f}, {tps:.0f} tok/s, {seen} tok")

        summary = run_linearize(loaded, paths, tokens=tokens, seq_len=seq_len, window=window, feature_map=feature_map,
                                combine=combine, lr=lr, lora_rank=lora_rank, lora_tokens=lora_tokens, seed=seed,
                                sinks=sinks,
                                out=out, resume=not no_resume, progress=step, checkpoint_every=checkpoint_every,
                                calibrate=calibrate,
                                calibrate_progress=lambda i, n: bar.set(i, n, "calibrating"))
    console.print(f"checkpoint: {out}  (complete: {summary.get('complete', True)})")
    cal = summary.get("linear_weight_calibration")
    if cal:
        console.print(f"linear-weight offset {cal['offset']:g}; tail perplexity by offset: "
                      + ", ".join(f"{g:g}: {v:.3f}" for g, v in zip(cal["grid"], cal["tail_perplexity"])))
