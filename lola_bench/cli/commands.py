"""info, ruler, commonsense, speed, perplexity, linearize: parse the flags, call the library, print."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..distributed import write_rank_timing
from ..errors import UserError
from .app import app
from .checks import at_least, check_model
from .display import Bar, console, err_console, print_frame, user_errors
from .notices import add_checkpoint_column, print_checkpoint_notice
from .options import (
    DECODE_HELP,
    INTS,
    NAMES,
    PREFILL_LOGITS_HELP,
    DecodeMode,
    DeviceOpt,
    PrefillLogits,
    RunOptions,
    int_list,
    run_options,
    split_list,
)


@app.command()
@user_errors
def info(device: DeviceOpt = "auto"):
    """Versions, device, cache directory, embedded model and data directories."""
    from ..models.gguf import EMBEDDED_INSTALL_HINT, dequantized_cache_path, embedded_available, embedded_gguf_path
    from ..models.loading import resolve_device
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


def named_summary(summary):
    """The summary with a first column ``variant`` naming each row's family (full attention, LoLA, LoLA base,
    eviction: StreamingLLM / H2O / ...) with its settings."""
    from ..report.labels import summary_variant_names

    if summary.empty or "attn" not in summary.columns:
        return summary
    return summary.assign(variant=summary_variant_names(summary))[["variant", *summary.columns]]


def _exactness_note(variants) -> str:
    from ..report import exactness_note

    return exactness_note([v.lola for v in variants])


@app.command()
@user_errors
@run_options("ruler")
def ruler(
    opts: RunOptions,
    ctx: Annotated[list[str], typer.Option("--ctx", metavar=INTS, help="Context length(s) in tokens (prompt + "
                                           "generated). Repeat or comma-separate (--ctx 512,1024).")] = ["4096"],
    task: Annotated[list[str], typer.Option("--task", metavar=NAMES, help="RULER task(s), repeated or "
                                            "comma-separated: niah_single_1..3, niah_multikey_1..3, "
                                            "niah_multivalue, niah_multiquery, vt, cwe, fwe, passkey, "
                                            "niah_single_1_lmeval, qa_1, qa_2, or all.")] = ["niah_single_1"],
    samples: Annotated[Optional[int], typer.Option("--samples", show_default="auto: 10 on CPU, 100 on GPU",
                                                   help="Samples per task and context (needle depths evenly "
                                                   "spaced).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for prompts (same seed, byte-identical prompts).")] = 0,
    essay_path: Annotated[Optional[str], typer.Option("--essay-path", envvar="LOLA_BENCH_ESSAY",
                                                      help="RULER essay JSON or a directory of .txt essays "
                                                      "(essay-haystack tasks).")] = None,
    qa_path: Annotated[Optional[str], typer.Option("--qa-path", envvar="LOLA_BENCH_QA",
                                                   help="SQuAD/HotpotQA file for qa_1/qa_2.")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Data mirror to read the essay haystack "
                                                    "(<dir>/ruler_essay/PaulGrahamEssays.json) and the QA files "
                                                    "(<dir>/ruler_qa/) from, unless --essay-path / --qa-path (or "
                                                    "their environment variables) say otherwise. Default: "
                                                    "$LOLA_BENCH_DATA, else ../shared/data beside the checkout.")]
    = None,
    chat_template: Annotated[Optional[bool], typer.Option("--chat-template/--no-chat-template",
                                                          help="Force the tokenizer's chat template on or off "
                                                          "(default: on for instruct models).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse the (variant, task, ctx) cells an "
                                         "interrupted run with the same --out and settings finished (kept in a "
                                         "hidden .<out>.resume folder beside it until the run completes). "
                                         "--no-resume deletes that folder first.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the variants x tasks x contexts plan, the "
                                          "samples and an estimated run time; load nothing, run nothing.")] = False,
    diagnostics: Annotated[bool, typer.Option("--diagnostics/--no-diagnostics", help="Needle diagnostics for LoLA, "
                                              "base and evict variants on needle tasks (niah_*, passkey): where each "
                                              "needle token is when the question is read (window, sparse cache, "
                                              "folded), its rank when it left the window, the last query's weight "
                                              "on the needle vs the linear memory, and the summary column "
                                              "needle_kept (predictions.jsonl, summary, needle_kept.png). Computed "
                                              "after each generation, outside the timings.")] = True,
    pin_needle: Annotated[bool, typer.Option("--pin-needle", help="Oracle ablation, not a method: keep the needle's "
                                             "tokens in every LoLA layer's sparse cache (inside lambda), so that "
                                             "accuracy shows whether misses come from the selection (pinned "
                                             "accuracy recovers) or the readout (it does not). Rows say scorer "
                                             "<scorer>+needle-pin; LoLA runs the torch path.")] = False,
    decode_mode: Annotated[DecodeMode, typer.Option("--decode-mode", help=DECODE_HELP + " Decode timings only: "
                                                    "TTFT and the prefill are the same either way.")] = "auto",
    prefill_logits: Annotated[PrefillLogits, typer.Option("--prefill-logits", help=PREFILL_LOGITS_HELP)] = "last",
):
    """RULER needle-in-a-haystack accuracy with TTFT, decode latency and memory, per attention variant.

    Every finished (variant, task, ctx) cell is saved as it finishes: rerun the same command with the same --out
    after an interruption and only the unfinished cells run.
    """
    from ..diagnostics.outcomes import NOTE as OUTCOME_NOTE
    from ..diagnostics.outcomes import needle_outcomes
    from ..evals.ruler.haystack import default_essay_path
    from ..evals.ruler_bench import RulerSettings, check_pairs, expand_tasks, run_ruler, validate
    from ..models.checkpoint import checkpoint_fingerprint
    from ..models.loading import load_model, load_tokenizer, resolve_device
    from ..provenance import device_label
    from ..records import ResumeStore
    from ..runs import plan_run, resolve_variants, run_config
    from .ruler_plan import default_samples, print_plan, samples_hint

    ctx, task = int_list("--ctx", ctx), split_list(task)
    at_least(seed=(seed, 0))
    device = resolve_device(opts.model.device)
    samples, auto_samples = (samples, False) if samples is not None else (default_samples(device), True)
    if data_dir is not None:
        essay_path, qa_path = _ruler_data(data_dir, essay_path, qa_path)
    essay, skipped = (default_essay_path(essay_path) if data_dir is None or essay_path else None), {}
    try:
        tasks = tuple(expand_tasks(task, essay, qa_path, skipped))
    except ValueError as e:
        raise UserError(str(e)) from None
    rs = RulerSettings(tasks=tasks, ctxs=tuple(ctx), samples=samples, seed=seed, essay_path=essay, qa_path=qa_path,
                       chat_template=chat_template, diagnostics=diagnostics, pin_needle=pin_needle,
                       decode_mode=decode_mode, prefill_logits=prefill_logits)
    validate(rs, 0)                       # flags and haystack data (parsed), before anything is written
    for t, reason in skipped.items():
        err_console.print(f"[yellow]--task all: skipping {t} ({reason})[/]", highlight=False)
    check_model(opts.model, ("--ctx", list(ctx)))
    if dry_run:
        _, variants = resolve_variants(opts.attn, opts.lola, opts.model, opts.kernels)
        print_plan(variants, rs, device, auto_samples)
        return
    ckpt, variants, run = plan_run(opts)
    tok = load_tokenizer(opts.model.spec)   # every (task, ctx) pair's prompt fits, before the model loads
    if tok is not None:
        check_pairs(rs, tok[0], tok[1] if chat_template is None else chat_template)
    if auto_samples:
        samples_hint(variants, rs, device)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    validate(rs, loaded.max_context)
    store = ResumeStore(run.path)
    if not resume:
        store.clear()
    key = {"model": opts.model.to_dict(), "resolved_dtype": str(loaded.dtype), "resolved_device": loaded.device,
           "checkpoint": checkpoint_fingerprint(ckpt) if ckpt else None, "essay_path": rs.essay_path,
           "qa_path": rs.qa_path}
    print_checkpoint_notice(ckpt, variants)
    with Bar("ruler", len(variants) * len(rs.tasks) * len(rs.ctxs) * samples) as step:
        result = run_ruler(loaded, variants, rs, ckpt=ckpt, device_label=device_label(loaded.device), progress=step,
                           store=store, resume_key=key)
    if result.reused:
        console.print(f"reused {len(result.reused)} finished cell(s) from the interrupted run in {store.path}: "
                      + ", ".join(f"{m} {t} ctx={c}" for m, t, c in result.reused), highlight=False)
    try:
        with run:
            run.write_json("config.json", run_config("ruler", opts.model, loaded, variants, {
                "ruler": {**rs.to_dict(), "chat_template_applied": result.chat_template}, "lola_checkpoint": ckpt}))
            run.append_jsonl("predictions.jsonl", result.predictions)
            run.write_table("summary", named_summary(result.summary), title="RULER", notes=_exactness_note(variants))
            write_rank_timing(run, result.predictions)
            outcomes = needle_outcomes(result.predictions)
            if not outcomes.empty:
                run.write_table("needle_outcomes", outcomes, title="Needle diagnostics by outcome", notes=OUTCOME_NOTE)
            from ..report import accuracy_plot, depth_heatmaps, needle_kept_plot

            depth_heatmaps(result.predictions, run.stage)
            accuracy_plot(result.summary, run.stage)
            needle_kept_plot(result.summary, run.stage)
    except UserError as e:              # e.g. disk full: the finished cells stay for a rerun
        if store.path.is_dir():
            raise UserError(f"{e}; the finished cells stay in {store.path}: rerun the same command to resume "
                            "them") from None
        raise
    store.clear()
    print_frame(result.summary, f"RULER on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "task", "ctx", "n", "accuracy", "ttft_s", "decode_ms_per_token", "peak_mem_mib", "cache_mib",
                 "full_kv_mib", "implementation"])
    console.print(f"results: {run.path}")


def _ruler_data(data_dir: str, essay_path: str | None, qa_path: str | None) -> tuple[str | None, str | None]:
    """ruler --data-dir: the essay file and QA directory inside the mirror, unless given on their own."""
    from pathlib import Path

    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise UserError(f"--data-dir {data_dir} does not exist")
    essay = d / "ruler_essay" / "PaulGrahamEssays.json"
    qa = d / "ruler_qa"
    return (essay_path or (str(essay) if essay.is_file() else None)), (qa_path or (str(qa) if qa.is_dir() else None))


@app.command()
@user_errors
@run_options("commonsense")
def commonsense(
    opts: RunOptions,
    tasks: Annotated[list[str], typer.Option("--task", "--tasks", metavar=NAMES, help="Task(s), repeated or "
                                             "comma-separated: piqa, arc_easy, arc_challenge, hellaswag, winogrande, "
                                             "mmlu (5-shot by default); online (--online, or no mirror) any lm-eval "
                                             "task name (checked against lm-eval's task list). --tasks is the same "
                                             "flag.")]
    = ["piqa,arc_easy,arc_challenge,hellaswag,winogrande"],
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", envvar="LOLA_BENCH_DATA",
                                                    help="Offline mirror of the task data (switches to the local task "
                                                    "YAMLs shipped in lola_bench/evals/commonsense/task_yamls/). "
                                                    "Default: ../shared/data beside the checkout if present, else "
                                                    "lm-eval's official (online) tasks.")]
    = None,
    online: Annotated[bool, typer.Option("--online", help="Use lm-eval's official task names (hub data) even if a "
                                         "local mirror exists.")] = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Items per task (per subject for mmlu).")] = None,
    num_fewshot: Annotated[Optional[int], typer.Option("--num-fewshot", help="Few-shot examples (default 0; mmlu "
                                                       "5).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="lm-eval batch size.")] = 1,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Also write lm-eval's per-sample records "
                                              "(its --log_samples): lm_eval/<variant>/samples_<task>.jsonl.")]
    = False,
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
    from ..evals.commonsense.lm_eval_format import write_lm_eval_files
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
    names = list(dict.fromkeys(split_list(tasks)))
    try:
        resolve_tasks(names, str(ddir) if ddir else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_model(opts.model)
    ckpt, variants, run = plan_run(opts)
    settings = CommonsenseSettings(tuple(names), str(ddir) if ddir else None, limit, num_fewshot, batch_size,
                                   log_samples)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    store = ResumeStore(run.path)
    if not resume:
        store.clear()
    key = {"model": opts.model.to_dict(), "resolved_dtype": str(loaded.dtype), "resolved_device": loaded.device,
           "checkpoint": checkpoint_fingerprint(ckpt) if ckpt else None, "data_dir": settings.data_dir, "limit": limit,
           "num_fewshot": num_fewshot, "batch_size": batch_size}
    print_checkpoint_notice(ckpt, variants)
    with Bar("commonsense", len(variants) * len(names)) as bar:
        res = run_commonsense_variants(loaded, variants, settings, ckpt=ckpt, store=store, resume_key=key,
                                       device_label=device_label(loaded.device),
                                       progress=lambda done, total, d: bar.set(done, total, d),
                                       notice=lambda m: err_console.print(f"[yellow]{m}[/]", highlight=False))
    res.summary = add_checkpoint_column(res.summary, ckpt)
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
        write_lm_eval_files(run, res.raw, res.samples, loaded.spec)
        run.write_table("summary", res.summary, title="Commonsense (lm-eval)", notes=notes)
        if len(variants) > 1:
            run.write_table("comparison", commonsense_comparison(res.summary),
                            title="Commonsense: variants side by side", notes=COMPARISON_NOTE + " " + notes)
    store.clear()
    print_frame(res.summary, f"lm-eval on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "task", "metric", "value_pct", "ci_low_pct", "ci_high_pct", "n", "implementation"])
    console.print(f"results: {run.path}")


@app.command()
@user_errors
@run_options("speed")
def speed(
    opts: RunOptions,
    ctx: Annotated[list[str], typer.Option("--ctx", metavar=INTS, help="Prompt length(s) in tokens, repeated or "
                                           "comma-separated.")] = ["1024,2048,4096"],
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per point (median reported, after one "
                                         "warm-up).")] = 3,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Decode steps timed after each prefill.")] = 16,
    decode_mode: Annotated[DecodeMode, typer.Option("--decode-mode", help=DECODE_HELP + " LoLA's graphed decode "
                                                    "is timed in whole chunks, with their merges.")] = "auto",
):
    """Prefill (TTFT) and decode latency on random prompts: full attention vs LoLA."""
    from ..evals.speed import run_speed
    from ..models.loading import load_model
    from ..provenance import device_label
    from ..runs import plan_run, run_config

    ctx = int_list("--ctx", ctx)
    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    if decode_tokens < 0:
        raise UserError(f"--decode-tokens must be >= 0, got {decode_tokens}")
    for c in ctx:
        if c < 1:
            raise UserError(f"--ctx must be >= 1, got {c}")
    check_model(opts.model, ("--ctx", list(ctx)))
    ckpt, variants, run = plan_run(opts)
    loaded = load_model(opts.model.spec, opts.model.device, opts.model.dtype)
    for c in ctx:
        if loaded.max_context and c > loaded.max_context:
            raise UserError(f"--ctx {c} outside 1..{loaded.max_context} (the model's maximum context)")
    print_checkpoint_notice(ckpt, variants)
    with Bar("speed", len(variants) * len(ctx) * repeats) as step:
        df = run_speed(loaded, variants, list(ctx), repeats=repeats, decode_tokens=decode_tokens, ckpt=ckpt,
                       device_label=device_label(loaded.device), progress=step, decode_mode=decode_mode)
    df = add_checkpoint_column(df, ckpt)
    with run:
        run.write_json("config.json", run_config("speed", opts.model, loaded, variants, {
            "speed": {"ctx": list(ctx), "repeats": repeats, "decode_tokens": decode_tokens,
                      "decode_mode": decode_mode}, "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Prefill and decode latency")
    print_frame(df, f"Latency on {loaded.source} ({device_label(loaded.device)})",
                ["attn", "ctx", "ttft_s", "ttft_vs_full", "decode_ms_per_token", "decode_amortized_ms_per_token",
                 "peak_mem_mib", "implementation", "decode_impl"])
    console.print(f"results: {run.path}")
