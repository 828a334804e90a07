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
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


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
def _root(
    kernels: Annotated[str, typer.Option("--kernels", envvar="LOLA_BENCH_KERNELS",
                                         help="LoLA implementation: auto (Triton kernels on CUDA, torch elsewhere), "
                                         "torch, or triton.")] = "auto",
):
    """lola-bench: what LoLA's sparse cache buys on your model (accuracy, TTFT, decode latency, memory)."""
    if kernels not in ("auto", "torch", "triton"):
        err_console.print(f"[bold red]error:[/] --kernels {kernels!r}: choose auto, torch or triton")
        raise typer.Exit(2)
    os.environ["LOLA_BENCH_KERNELS"] = kernels
    from .provenance import mark_start

    mark_start()


# ---- shared options -------------------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", help="Model spec: smollm2-135m (embedded default), random:<preset> "
                                       "(tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b), a .gguf path, a local model "
                                       "directory, or a Hugging Face hub id (online).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 | "
                                       "float16.")]
WindowOpt = Annotated[int, typer.Option("--window", help="eta: local sliding window (exact softmax). With the default "
                                        "cadence (chunk = eta) a query sees between eta+1 and 2*eta recent keys.")]
LambdaOpt = Annotated[int, typer.Option("--lambda", help="lambda: sparse global cache size (pairs kept by the "
                                        "scorer).")]
ScorerOpt = Annotated[str, typer.Option("--scorer", help="Which evicted pairs stay cached: sre (self-recall error, "
                                        "default), random, key_norm, attention, recency, sink.")]
SinksOpt = Annotated[Optional[int], typer.Option("--sinks", help="Attention sinks: the first N positions always "
                                              "kept exact, on top of lambda (never folded into the linear state). "
                                              "Default: the checkpoint's value (what it was trained with), else 0.")]
CombineOpt = Annotated[Optional[str], typer.Option("--combine", help="How softmax and linear parts mix: calibrated "
                                                  "(unshifted exp vs exp(factor) phi.phi: exact matches outweigh the "
                                                  "linear memory), lolcats, gated, normalized. Default: the "
                                                  "checkpoint's formula, else gated.")]
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


def _lola_config(window, lam, scorer, feature_map, combine, gqa, chunk, seed=0, ckpt=None, sinks=None):
    """LolaConfig from flags; combine formula and sinks default to what the checkpoint was trained with."""
    from .attention.config import LolaConfig
    from .models.checkpoint import read_meta

    meta = read_meta(ckpt) if ckpt else {}
    combine = combine or meta.get("combine") or "gated"
    sinks = sinks if sinks is not None else int(meta.get("sinks") or 0)
    return LolaConfig(window=window, sparse=lam, scorer=scorer, feature_map=feature_map, combine=combine, gqa=gqa,
                      chunk=chunk, seed=seed, sinks=sinks)


class _LogProgress:
    """Progress for non-terminal stderr (CI logs, nohup, Slurm): a plain line at most every ``every`` seconds."""

    def __init__(self, every: float = 15.0):
        import time

        self._time, self.every, self.tasks, self.last = time.monotonic, every, {}, 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for tid in self.tasks:
            self._emit(tid, force=True)
        return False

    def add_task(self, description, total=None):
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "start": self._time()}
        return tid

    def update(self, tid, advance=0, completed=None, description=None, total=None, **_):
        t = self.tasks[tid]
        if total is not None:
            t["total"] = total
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        if "first" not in t:  # a resumed run starts part-way: the rate counts this run's work only
            t["first"] = (t["completed"], self._time())
        if description:
            t["description"] = description
        self._emit(tid)

    def _emit(self, tid, force=False):
        now = self._time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        t = self.tasks[tid]
        done, total, el = t["completed"], t["total"], now - t["start"]
        d0, t0 = t.get("first", (0, t["start"]))
        eta = f", ETA {(now - t0) / (done - d0) * (total - done):.0f}s" if done > d0 and total else ""
        err_console.print(f"[{el:.0f}s] {t['description']}: {done}/{total}{eta}", highlight=False)


def _plan(command, *, model, device, dtype, lola_ckpt, attn, window, lam, scorer, feature_map, combine, gqa="grouped",
          chunk=None, seed=0, out=None, overwrite=False, sinks=None):
    """Validate the model/attention flags and claim the run directory (nothing is written yet)."""
    from .models.checkpoint import resolve_checkpoint
    from .records import RunDir
    from .runs import attention_variants, default_run_dir
    from .settings import ModelSettings

    ms = ModelSettings(model, device, dtype, lola_ckpt)
    ckpt, fmap = resolve_checkpoint(ms, feature_map)
    variants = attention_variants(attn, _lola_config(window, lam, scorer, fmap, combine, gqa, chunk, seed, ckpt,
                                                     sinks))
    run = RunDir(out or default_run_dir(command, model), overwrite=overwrite)
    return ms, ckpt, variants, run


def _progress():
    if not sys.stderr.isatty():
        return _LogProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=False)


SHORT_NAMES = {"accuracy": "acc", "decode_ms_per_token": "dec ms/tok", "peak_mem_mib": "peak MiB",
               "cache_mib": "cache MiB", "full_kv_mib": "full KV MiB", "ttft_s": "TTFT s"}


def _print_frame(df, title, columns=None):
    t = Table(title=title)
    cols = columns or list(df.columns)
    for c in cols:
        t.add_column(SHORT_NAMES.get(c, str(c)), justify="right" if df[c].dtype.kind in "fi" else "left",
                     overflow="fold")
    for row in df[cols].itertuples(index=False):
        t.add_row(*[("" if x != x else f"{x:.3g}") if isinstance(x, float) else ("" if x is None else str(x))
                    for x in row])
    console.print(t)


def _exactness_note(variants) -> str:
    from .report import exactness_note

    return exactness_note([v.lola for v in variants])


@app.command()
@user_errors
def ruler(
    ctx: Annotated[list[int], typer.Option("--ctx", help="Context length(s) in tokens (prompt + generated). Repeat "
                                           "for several.")] = [4096],
    task: Annotated[list[str], typer.Option("--task", help="RULER task(s): niah_single_1..3, niah_multikey_1..3, "
                                            "niah_multivalue, niah_multiquery, vt, cwe, fwe, passkey, "
                                            "niah_single_1_lmeval, qa_1, qa_2, or all.")] = ["niah_single_1"],
    samples: Annotated[int, typer.Option("--samples", help="Samples per task and context (needle depths evenly "
                                         "spaced).")] = 100,
    attn: Annotated[list[str], typer.Option("--attn", help="Attention variant(s): full (softmax), base (window + "
                                            "linear, lambda=0), lola. Repeat to compare in one run.")]
    = ["full", "base", "lola"],
    window: WindowOpt = 64,
    lam: LambdaOpt = 512,
    scorer: ScorerOpt = "sre",
    feature_map: Annotated[Optional[str], typer.Option("--feature-map", help="phi for the linear state: hedgehog "
                                                       "(learned; default when a checkpoint is available), "
                                                       "hedgehog-identity, elu, relu, taylor.")] = None,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    gqa: GqaOpt = "grouped",
    chunk: ChunkOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for prompts (same seed, byte-identical prompts).")] = 0,
    essay_path: Annotated[Optional[str], typer.Option("--essay-path", envvar="LOLA_BENCH_ESSAY",
                                                      help="RULER essay JSON or a directory of .txt essays "
                                                      "(essay-haystack tasks).")] = None,
    qa_path: Annotated[Optional[str], typer.Option("--qa-path", envvar="LOLA_BENCH_QA",
                                                   help="SQuAD/HotpotQA file for qa_1/qa_2.")] = None,
    chat_template: Annotated[Optional[bool], typer.Option("--chat-template/--no-chat-template",
                                                          help="Force the tokenizer's chat template on or off "
                                                          "(default: on for instruct models).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default results/ruler/<model>-<time>).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
):
    """RULER needle-in-a-haystack accuracy with TTFT, decode latency and memory, per attention variant."""
    from .evals.ruler_bench import RulerSettings, expand_tasks, run_ruler, validate
    from .models.loading import load_model
    from .provenance import device_label
    from .runs import run_config

    ms, ckpt, variants, run = _plan("ruler", sinks=sinks,
                                    model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt, attn=attn,
                                    window=window, lam=lam, scorer=scorer, feature_map=feature_map, combine=combine,
                                    gqa=gqa, chunk=chunk, seed=seed, out=out, overwrite=overwrite)
    essay = essay_path or _default_essay()
    rs = RulerSettings(tasks=tuple(expand_tasks(task)), ctxs=tuple(ctx), samples=samples, seed=seed,
                       essay_path=essay, qa_path=qa_path, chat_template=chat_template)
    validate(rs, 0)
    loaded = load_model(model, device, dtype)
    validate(rs, loaded.max_context)
    total = len(variants) * len(rs.tasks) * len(rs.ctxs) * samples
    with _progress() as prog:
        bar = prog.add_task("ruler", total=total)

        def step(adv, desc):
            prog.update(bar, advance=adv, **({"description": desc} if desc else {}))

        result = run_ruler(loaded, variants, rs, ckpt=ckpt, device_label=device_label(loaded.device), progress=step)
    with run:
        cfg = run_config("ruler", ms, loaded, variants, {"ruler": {**rs.to_dict(), "chat_template_applied":
                                                                   result.chat_template},
                                                         "lola_checkpoint": ckpt})
        run.write_json("config.json", cfg)
        run.append_jsonl("predictions.jsonl", result.predictions)
        run.write_table("summary", result.summary, title="RULER", notes=_exactness_note(variants))
        from .report import depth_heatmaps

        depth_heatmaps(result.predictions, run.stage)
    cols = ["attn", "task", "ctx", "n", "accuracy", "ttft_s", "decode_ms_per_token", "peak_mem_mib", "cache_mib",
            "full_kv_mib"]
    _print_frame(result.summary, f"RULER on {loaded.source} ({device_label(loaded.device)})", cols)
    console.print(f"results: {run.path}")


@app.command()
@user_errors
def commonsense(
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated: piqa, arc_easy, arc_challenge, hellaswag, "
                                       "winogrande, mmlu (5-shot by default).")]
    = "piqa,arc_easy,arc_challenge,hellaswag,winogrande",
    attn: Annotated[list[str], typer.Option("--attn", help="Attention variant(s): full, base (lambda=0), lola. Repeat "
                                            "to compare in one run.")] = ["full", "base", "lola"],
    window: WindowOpt = 64,
    lam: LambdaOpt = 512,
    scorer: ScorerOpt = "sre",
    feature_map: Annotated[Optional[str], typer.Option("--feature-map", help="phi for the linear state (see ruler "
                                                       "--help).")] = None,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    gqa: GqaOpt = "grouped",
    chunk: ChunkOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
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
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default results/commonsense/<model>-"
                                               "<time>).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse the tasks an interrupted run with the "
                                         "same --out and settings finished, and the answered requests of the task "
                                         "it was in (kept in a hidden .<out>.resume folder beside it until the run "
                                         "completes). --no-resume deletes that folder first.")] = True,
):
    """Zero-shot commonsense suites through lm-eval for full, base and LoLA attention.

    Every (variant, task) result is saved as soon as it finishes, and every answered request of the task in
    progress is cached (lm-eval's request cache): rerun the same command with the same --out after an
    interruption and only the unfinished tasks are evaluated, the interrupted one from where it stopped.
    """
    import pandas as pd

    from .evals.commonsense import resolve_tasks, run_commonsense
    from .models.loading import load_model
    from .models.variants import apply_attention
    from .paths import data_dir as find_data
    from .provenance import device_label
    from .records import ResumeStore
    from .runs import run_config
    from .sweep import cell_hash, fingerprint

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    ddir = None if online else find_data(data_dir)
    if data_dir and not online and not ddir.is_dir():
        raise UserError(f"--data-dir {data_dir} does not exist")
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        resolve_tasks(names, str(ddir) if ddir else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    ms, ckpt, variants, run = _plan("commonsense", sinks=sinks,
                                    model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt,
                                    attn=attn, window=window, lam=lam, scorer=scorer, feature_map=feature_map,
                                    combine=combine, gqa=gqa, chunk=chunk, out=out, overwrite=overwrite)
    loaded = load_model(model, device, dtype)
    store = ResumeStore(run.path)
    settings = {"model": ms.to_dict(), "resolved_dtype": str(loaded.dtype), "resolved_device": loaded.device,
                "checkpoint": fingerprint(ckpt) if ckpt else None, "data_dir": str(ddir) if ddir else None,
                "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size}
    frames, raw = [], {}
    if not resume:
        store.clear()
    spans = _beyond_exact_shares(loaded.tokenizer, names, ddir, limit, num_fewshot, variants)
    with _progress() as prog:
        bar = prog.add_task("commonsense", total=len(variants) * len(names))
        for v in variants:
            apply_attention(loaded.model, v, ckpt)

            def step(task_name, i, n, _v=v):
                prog.update(bar, completed=variants.index(_v) * len(names) + i - 1,
                            description=f"{_v.mode}: {task_name} ({i}/{n})")

            def key(task_name, _v=v):
                return {**settings, "attention": _v.to_dict(), "task": task_name}

            def save(task_name, record, _v=v):
                store.save(f"{_v.mode}-{task_name}", key(task_name), record)

            done = {}
            if resume:
                done = {t: r for t in names if (r := store.load(f"{v.mode}-{t}", key(t))) is not None}
                if done:
                    console.print(f"{v.mode}: reusing {', '.join(done)} from the interrupted run in {store.path}")
            # request-level cache for the task in progress: a long task killed part-way resumes at its next request
            rcache = store.path / f"requests-{v.mode}-{cell_hash(key(''))}"
            try:
                df, res = run_commonsense(loaded.model, loaded.tokenizer, names, data_dir=str(ddir) if ddir else None,
                                          limit=limit, num_fewshot=num_fewshot, batch_size=batch_size,
                                          device=loaded.device, progress=step, finished=done, on_task_done=save,
                                          request_cache=rcache)
            except ValueError as e:
                raise UserError(str(e)) from None
            c = v.lola
            df.insert(0, "attn", v.mode)
            for col, val in [("window", c.window if c else None), ("lambda", c.sparse if c else None),
                             ("sinks", c.sinks if c else None), ("scorer", c.scorer if c else None),
                             ("feature_map", c.feature_map if c else None)]:
                df[col] = val
            df["beyond_exact_span"] = df["task"].map(spans.get(v.mode, {})) if c else None
            df.insert(0, "model", model)
            frames.append(df)
            raw[v.mode] = res
        prog.update(bar, completed=len(variants) * len(names))
    apply_attention(loaded.model, variants[0].__class__("full"))
    summary = pd.concat(frames, ignore_index=True)
    summary["device"] = device_label(loaded.device)
    with run:
        run.write_json("config.json", run_config("commonsense", ms, loaded, variants, {
            "commonsense": {"tasks": names, "data_dir": str(ddir) if ddir else None, "offline": ddir is not None,
                            "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size},
            "lola_checkpoint": ckpt}))
        run.write_json("lm_eval_results.json", raw)
        notes = _exactness_note(variants) + (
            " `beyond_exact_span`: share of the task's requests longer than that span (only they can score "
            "differently from full attention)." if spans else "") + (
            " HellaSwag offline uses the preprocessed full validation set: close to, not identical with, lm-eval's."
            if ddir else "")
        notes = notes.strip()
        run.write_table("summary", summary, title="Commonsense (lm-eval)", notes=notes)
        if len(variants) > 1:
            from .report import COMPARISON_NOTE, commonsense_comparison

            run.write_table("comparison", commonsense_comparison(summary), title="Commonsense: variants side by side",
                            notes=COMPARISON_NOTE + " " + notes)
    store.clear()
    _print_frame(summary, f"lm-eval on {loaded.source} ({device_label(loaded.device)})",
                 ["attn", "task", "metric", "value", "stderr", "n"])
    console.print(f"results: {run.path}")


def _beyond_exact_shares(tokenizer, names, ddir, limit, num_fewshot, variants) -> dict[str, dict[str, float]]:
    from .evals.commonsense import beyond_exact_shares

    configs = {v.mode: v.lola for v in variants if v.lola is not None}
    try:
        return beyond_exact_shares(tokenizer, names, configs, data_dir=str(ddir) if ddir else None, limit=limit,
                                   num_fewshot=num_fewshot)
    except Exception as e:  # noqa: BLE001 - a missing statistic must not stop the evaluation
        console.print(f"[yellow]request lengths unavailable ({type(e).__name__}: {e})[/]")
        return {}


@app.command()
@user_errors
def speed(
    ctx: Annotated[list[int], typer.Option("--ctx", help="Prompt length(s) in tokens.")] = [1024, 2048, 4096],
    attn: Annotated[list[str], typer.Option("--attn", help="Variant(s): full, base, lola.")] = ["full", "base", "lola"],
    window: WindowOpt = 64,
    lam: LambdaOpt = 512,
    scorer: ScorerOpt = "sre",
    feature_map: Annotated[Optional[str], typer.Option("--feature-map", help="phi for the linear state.")] = None,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    gqa: GqaOpt = "grouped",
    chunk: ChunkOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per point (median reported, after one "
                                         "warm-up).")] = 3,
    decode_tokens: Annotated[int, typer.Option("--decode-tokens", help="Decode steps timed after each prefill.")] = 16,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory (default results/speed/<model>-<time>).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
):
    """Prefill (TTFT) and decode latency on random prompts: full attention vs LoLA."""
    from .evals.speed import run_speed
    from .models.loading import load_model
    from .provenance import device_label
    from .runs import run_config

    if repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {repeats}")
    ms, ckpt, variants, run = _plan("speed", sinks=sinks,
                                    model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt,
                                    attn=attn, window=window, lam=lam, scorer=scorer, feature_map=feature_map,
                                    combine=combine, gqa=gqa, chunk=chunk, out=out, overwrite=overwrite)
    loaded = load_model(model, device, dtype)
    for c in ctx:
        if c < 1 or (loaded.max_context and c > loaded.max_context):
            raise UserError(f"--ctx {c} outside 1..{loaded.max_context} (the model's maximum context)")
    with _progress() as prog:
        bar = prog.add_task("speed", total=len(variants) * len(ctx) * repeats)
        df = run_speed(loaded, variants, list(ctx), repeats=repeats, decode_tokens=decode_tokens, ckpt=ckpt,
                       device_label=device_label(loaded.device),
                       progress=lambda a, d: prog.update(bar, advance=a, description=d))
    with run:
        run.write_json("config.json", run_config("speed", ms, loaded, variants, {
            "speed": {"ctx": list(ctx), "repeats": repeats, "decode_tokens": decode_tokens}, "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Prefill and decode latency")
    _print_frame(df, f"Latency on {loaded.source} ({device_label(loaded.device)})",
                 ["attn", "ctx", "ttft_s", "ttft_vs_full", "decode_ms_per_token", "peak_mem_mib"])
    console.print(f"results: {run.path}")


@app.command()
@user_errors
def sweep(
    lam: Annotated[list[str], typer.Option("--lambda", help="lambda value(s); repeat or comma-separate "
                                           "(e.g. --lambda 0,128,512). 0 = base (window + linear).")] = ["0,64,512"],
    window: Annotated[list[str], typer.Option("--window", help="eta value(s), e.g. --window 32,64,128,256.")]
    = ["32,64,128,256"],
    ctx: Annotated[list[str], typer.Option("--ctx", help="Context length(s) (ruler suite).")] = ["4096"],
    task: Annotated[list[str], typer.Option("--task", help="Task(s): RULER tasks or commonsense tasks "
                                            "(default: niah_single_1 / the five zero-shot suites).")] = [],
    scorer: Annotated[list[str], typer.Option("--scorer", help="Scorer(s) compared at equal lambda: sre, random, "
                                              "key_norm, attention, recency, sink.")] = ["sre"],
    feature_map: Annotated[list[str], typer.Option("--feature-map", help="Feature map(s) (default: the "
                                                   "checkpoint's, else hedgehog-identity).")] = [],
    suite: Annotated[str, typer.Option("--suite", help="ruler | commonsense.")] = "ruler",
    full: Annotated[bool, typer.Option("--full/--no-full", help="Add full-attention reference rows.")] = True,
    samples: Annotated[int, typer.Option("--samples", help="Samples per ruler cell.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Prompt seed.")] = 0,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    gqa: GqaOpt = "grouped",
    chunk: ChunkOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
    essay_path: Annotated[Optional[str], typer.Option("--essay-path", envvar="LOLA_BENCH_ESSAY",
                                                      help="Essay haystack for essay tasks.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Items per commonsense task.")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", envvar="LOLA_BENCH_DATA",
                                                    help="Offline data mirror (commonsense).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Sweep directory (default results/sweep/<model>-<suite>-"
                                               "<grid hash>; the same command resumes there).")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="k/n: run the cells with index % n == k-1 (split a "
                                                 "sweep over machines; merge with `lola-bench report`).")] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Re-run cells recorded as failed (OOM/error)."
                                               )] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid, what is done, and an ETA; run "
                                          "nothing.")] = False,
):
    """Resumable grids over eta / lambda / context / scorer: tables and Pareto plots of accuracy vs memory."""
    from .sweep import SweepSpec, default_sweep_dir, format_eta, plan_sweep, run_sweep

    def ints(flag, values):
        try:
            return tuple(int(x) for v in values for x in str(v).split(",") if x.strip())
        except ValueError:
            raise UserError(f"{flag}: expected integers (comma-separated or repeated), got {', '.join(values)}"
                            ) from None

    def strs(values):
        return tuple(x.strip() for v in values for x in v.split(",") if x.strip())

    spec = SweepSpec(suite=suite, model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt,
                     lambdas=ints("--lambda", lam), windows=ints("--window", window), ctxs=ints("--ctx", ctx),
                     tasks=strs(task), scorers=strs(scorer),
                     feature_maps=strs(feature_map) or (None,), full=full, samples=samples, seed=seed,
                     combine=combine, sinks=sinks, gqa=gqa, chunk=chunk, essay_path=essay_path or _default_essay(),
                     limit=limit,
                     data_dir=data_dir)
    out_dir = out or str(default_sweep_dir(spec))
    plan = plan_sweep(spec, out_dir, shard=shard, retry_failed=retry_failed)
    if dry_run:
        keep = [c for c in ["index", "cell_id", "attn", "window", "lambda", "scorer", "feature_map", "task", "ctx",
                            "status", "eta_s"] if c in plan.columns]
        _print_frame(plan, f"sweep {out_dir}: {plan.attrs['done']}/{plan.attrs['total']} done, "
                     f"ETA {format_eta(plan.attrs['eta_s'])}", keep)
        return
    with _progress() as prog:
        bar = prog.add_task("sweep", total=int(plan.attrs["pending"]))
        res = run_sweep(spec, out_dir, shard=shard, retry_failed=retry_failed,
                        progress=lambda a, d: prog.update(bar, advance=a, **({"description": d} if d else {})))
    console.print(f"ran {len(res.ran)} cell(s) ({len(res.failed)} failed), {res.skipped} already done")
    if not res.frame.empty:
        cols = [c for c in ["attn", "window", "lambda", "scorer", "task", "ctx", "accuracy", "ttft_s", "cache_mib",
                            "status"] if c in res.frame.columns]
        _print_frame(res.frame, f"sweep {res.out_dir}", cols)
    console.print(f"results: {res.out_dir}")


@app.command()
@user_errors
def report(
    dirs: Annotated[list[str], typer.Argument(help="Sweep directories (with sweep.csv; several are merged), or "
                                              "commonsense run directories (with summary.csv; their variants are "
                                              "compared side by side).")],
    out: Annotated[Optional[str], typer.Option("--out", help="Where to write the merged report (required for "
                                               "several directories).")] = None,
):
    """Re-render sweep tables and plots from sweep.csv alone (merging shards), or compare commonsense runs
    (comparison.csv/.md: one column per attention variant and its difference from full attention)."""
    from .report import render_report

    for p in render_report(dirs, out):
        console.print(str(p))


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

    from .models.linearize import linearize as run_linearize
    from .models.loading import load_model

    if tokens < seq_len:
        raise UserError(f"--tokens must be at least --seq-len ({seq_len})")
    if threads:
        torch.set_num_threads(threads)
    paths = [p.strip() for p in data.split(",") if p.strip()]
    loaded = load_model(model, device, "float32")
    with _progress() as prog:
        bar = prog.add_task("linearize", total=None)

        def step(i, total, seen, loss, tps):
            prog.update(bar, completed=i, total=total, description=f"loss {loss:.1f}, {tps:.0f} tok/s, {seen} tok")

        summary = run_linearize(loaded, paths, tokens=tokens, seq_len=seq_len, window=window, feature_map=feature_map,
                                combine=combine, lr=lr, lora_rank=lora_rank, lora_tokens=lora_tokens, seed=seed,
                                sinks=sinks,
                                out=out, resume=not no_resume, progress=step, checkpoint_every=checkpoint_every,
                                calibrate=calibrate,
                                calibrate_progress=lambda i, n: prog.update(bar, completed=i, total=n,
                                                                            description="calibrating"))
    console.print(f"checkpoint: {out}  (complete: {summary.get('complete', True)})")
    cal = summary.get("linear_weight_calibration")
    if cal:
        console.print(f"linear-weight offset {cal['offset']:g}; tail perplexity by offset: "
                      + ", ".join(f"{g:g}: {v:.3f}" for g, v in zip(cal["grid"], cal["tail_perplexity"])))


@app.command()
@user_errors
def perplexity(
    text: Annotated[Optional[str], typer.Option("--text", help="Held-out text file (default: wikitext-2 test from "
                                                "the data mirror).")] = None,
    attn: Annotated[list[str], typer.Option("--attn", help="Variant(s): full, base, lola.")] = ["full", "base", "lola"],
    window: WindowOpt = 64,
    lam: LambdaOpt = 512,
    scorer: ScorerOpt = "sre",
    feature_map: Annotated[Optional[str], typer.Option("--feature-map", help="phi for the linear state.")] = None,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
    seq_len: Annotated[int, typer.Option("--seq-len", help="Window length (non-overlapping).")] = 1024,
    max_tokens: Annotated[Optional[int], typer.Option("--max-tokens", help="Evaluate only the first N tokens.")]
    = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Run directory.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run directory.")] = False,
):
    """Perplexity on held-out text for full, base and LoLA attention (is the linearization sound?)."""
    import pandas as pd

    from .models.linearize import perplexity as ppl
    from .models.loading import load_model
    from .models.variants import apply_attention
    from .paths import data_dir
    from .provenance import device_label
    from .runs import run_config

    if text is None:
        d = data_dir()
        text = str(d / "text" / "wikitext-2-raw-wiki.test.raw") if d else None
    if not text or not os.path.isfile(text):
        raise UserError(f"text file not found: {text} (pass --text)")
    ms, ckpt, variants, run = _plan("perplexity", sinks=sinks,
                                    model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt,
                                    attn=attn, window=window, lam=lam, scorer=scorer, feature_map=feature_map,
                                    combine=combine, gqa="grouped", chunk=None, out=out, overwrite=overwrite)
    loaded = load_model(model, device, dtype)
    rows = []
    with _progress() as prog:
        bar = prog.add_task("perplexity", total=len(variants))
        for v in variants:
            apply_attention(loaded.model, v, ckpt)
            value = ppl(loaded.model, loaded.tokenizer, text, seq_len=seq_len, max_tokens=max_tokens)
            c = v.lola
            rows.append({"model": model, "attn": v.mode, "window": c.window if c else None,
                         "lambda": c.sparse if c else None, "sinks": c.sinks if c else None,
                         "feature_map": c.feature_map if c else None, "text": os.path.basename(text),
                         "seq_len": seq_len, "max_tokens": max_tokens,
                         "perplexity": value, "device": device_label(loaded.device)})
            prog.update(bar, advance=1, description=f"{v.mode}: {value:.2f}")
    df = pd.DataFrame(rows)
    with run:
        run.write_json("config.json", run_config("perplexity", ms, loaded, variants, {
            "perplexity": {"text": text, "seq_len": seq_len, "max_tokens": max_tokens}, "lola_checkpoint": ckpt}))
        run.write_table("summary", df, title="Perplexity")
    _print_frame(df, "Perplexity", ["attn", "window", "lambda", "feature_map", "perplexity"])
    console.print(f"results: {run.path}")


def _default_essay():
    from .paths import data_dir

    d = data_dir()
    if d and (d / "ruler_essay" / "PaulGrahamEssays.json").is_file():
        return str(d / "ruler_essay" / "PaulGrahamEssays.json")
    return None


def main():  # pragma: no cover
    sys.exit(app())
