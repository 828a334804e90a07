"""sweep and report: parse the flags, call the library, print."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from ..errors import UserError
from ..sweep.grid import SUITES
from .app import app
from .display import Bar, console, print_frame, user_errors
from .options import (
    DECODE_HELP,
    INTS,
    NAMES,
    PREFILL_LOGITS_HELP,
    ChunkOpt,
    CkptOpt,
    CombineOpt,
    DecodeMode,
    DeviceOpt,
    DtypeOpt,
    GqaOpt,
    ModelOpt,
    PrefillLogits,
    PresetOpt,
    SinksOpt,
    ThreadsOpt,
    apply_threads,
    int_list,
    kernels_flag,
    split_list,
)

Launcher = Literal["slurm", "local"]


@app.command()
@user_errors
def sweep(
    lam: Annotated[list[str], typer.Option("--lambda", metavar=INTS, help="lambda value(s); repeat or comma-separate "
                                           "(e.g. --lambda 0,128,512). 0 = base (window + linear).")] = ["0,64,512"],
    window: Annotated[list[str], typer.Option("--window", metavar=INTS, help="eta value(s), e.g. --window "
                                              "32,64,128,256.")]
    = ["32,64,128,256"],
    ctx: Annotated[list[str], typer.Option("--ctx", metavar=INTS, help="Context length(s) (ruler suite).")] = ["4096"],
    task: Annotated[list[str], typer.Option("--task", metavar=NAMES, help="Task(s): RULER tasks or commonsense tasks "
                                            "(default: niah_single_1 / the five zero-shot suites).")] = [],
    scorer: Annotated[list[str], typer.Option("--scorer", metavar=NAMES, help="Scorer(s) compared at equal "
                                              "lambda: sre, sre_relative, random, key_norm, attention, recency, "
                                              "sink, snapkv.")]
    = ["sre"],
    feature_map: Annotated[list[str], typer.Option("--feature-map", metavar=NAMES, help="Feature map(s): hedgehog, "
                                                   "hedgehog-identity, elu, relu, taylor (default: the checkpoint's, "
                                                   "else hedgehog-identity).")] = [],
    suite: Annotated[Literal[SUITES], typer.Option("--suite", help="ruler | commonsense.")] = "ruler",
    full: Annotated[bool, typer.Option("--full/--no-full", help="Add full-attention reference rows.")] = True,
    evict: Annotated[bool, typer.Option("--evict", help="Add KV-eviction cells (--attn evict) at the same windows, "
                                        "lambdas and scorers (sre excepted); lambda 0 = sinks + window.")] = False,
    evict_scorer: Annotated[list[str], typer.Option("--evict-scorer", metavar=NAMES, help="Scorer(s) of the "
                                                    "eviction cells (implies --evict; default: --scorer's, sre "
                                                    "excepted), e.g. --scorer sre --evict-scorer sink,attention,"
                                                    "snapkv,key_norm.")] = [],
    evict_at: Annotated[list[str], typer.Option("--evict-at", metavar=NAMES, help="When the eviction cells choose "
                                                "(an axis: one cell per value): boundary (default; every chunk "
                                                "boundary while the prompt is read: H2O-style / SnapKV-style) and / or "
                                                "prompt_end (full-attention prefill, then one compression: the "
                                                "published SnapKV / H2O, no eviction while decoding; ruler only). "
                                                "--budget-mib sizes both by the cache held after the prompt; "
                                                "prompt_end's peak memory during the prefill is the full KV cache, "
                                                "and its cache grows by the generated tokens.")] = ["boundary"],
    budget_mib: Annotated[list[str], typer.Option("--budget-mib", metavar="MIB[,MIB...]", help="Equal-memory "
                                                  "comparison (ruler): per --ctx, each LoLA / eviction family gets the "
                                                  "largest lambda whose cache bytes fit each budget (replaces the "
                                                  "nonzero --lambda values; base and full keep their own cost).")]
    = [],
    samples: Annotated[int, typer.Option("--samples", help="Samples per ruler cell.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Prompt seed.")] = 0,
    combine: CombineOpt = None,
    sinks: SinksOpt = None,
    gqa: GqaOpt = None,
    preset: PresetOpt = None,
    chunk: ChunkOpt = None,
    model: ModelOpt = "smollm2-135m",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    lola_ckpt: CkptOpt = None,
    threads: ThreadsOpt = None,
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
    diagnostics: Annotated[bool, typer.Option("--diagnostics/--no-diagnostics", help="Needle diagnostics columns "
                                              "in ruler cells with LoLA / base / evict variants (see `ruler "
                                              "--help`); not part of a cell's id.")] = True,
    decode_mode: Annotated[DecodeMode, typer.Option("--decode-mode", help=DECODE_HELP + " Ruler cells; a graphed "
                                                    "cell's id says so (eager cells keep theirs).")] = "auto",
    prefill_logits: Annotated[PrefillLogits, typer.Option("--prefill-logits", help=PREFILL_LOGITS_HELP + " Ruler "
                                                          "cells.")] = "last",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the grid, what is done, and an ETA; run "
                                          "nothing.")] = False,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Reuse the cells already finished in --out "
                                         "(default: the same command continues an interrupted sweep). --no-resume "
                                         "refuses a directory that holds finished cells (a sweep never deletes "
                                         "them): give a new --out to start over.")] = True,
    launcher: Annotated[Optional[Launcher], typer.Option("--launcher", help="Run the pending cells as one submitit "
                                                         "array job: slurm (sbatch; from a login node) or local "
                                                         "(processes on this machine). Rerun the same command to "
                                                         "merge what finished and resubmit what did not. Default: "
                                                         "run the cells here, one after another.")] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", help="Array tasks the pending cells are split into "
                                                "(--launcher; default: one per cell).")] = None,
    wait: Annotated[Optional[bool], typer.Option("--wait/--no-wait", show_default="wait for local, not for slurm",
                                                 help="Wait for the jobs, then write sweep.csv and the report "
                                                 "(--launcher).")] = None,
    slurm_partition: Annotated[Optional[str], typer.Option("--slurm-partition", help="Slurm partition.")] = None,
    slurm_gpus_per_task: Annotated[Optional[int], typer.Option("--slurm-gpus-per-task", help="GPUs per array "
                                                               "task (one model replica each).")] = None,
    slurm_time: Annotated[Optional[str], typer.Option("--slurm-time", help="Time limit per array task: minutes "
                                                      "(90) or [D-]HH:MM[:SS]. A task that reaches it is requeued "
                                                      "and finishes its remaining cells.")] = None,
    slurm_array_parallelism: Annotated[Optional[int], typer.Option("--slurm-array-parallelism", help="At most "
                                                                   "this many array tasks run at once.")] = None,
    slurm_cpus_per_task: Annotated[Optional[int], typer.Option("--slurm-cpus-per-task", help="CPUs per array "
                                                               "task.")] = None,
    slurm_mem_gb: Annotated[Optional[int], typer.Option("--slurm-mem-gb", help="Memory per array task, GB."
                                                        )] = None,
    slurm_param: Annotated[list[str], typer.Option("--slurm-param", metavar="KEY=VALUE", help="Any other sbatch "
                                                   "option, passed through as --KEY=VALUE (repeat: "
                                                   "--slurm-param account=proj --slurm-param qos=high).")] = [],
):
    """Resumable grids over eta / lambda / context / scorer: tables and Pareto plots of accuracy vs memory."""
    from ..evals.ruler.haystack import default_essay_path
    from ..settings import ModelSettings
    from ..sweep import SweepSpec, default_sweep_dir, format_eta, plan_sweep, run_sweep

    ints, strs = int_list, split_list
    from .notices import model_alias

    model = model_alias(model)
    spec = SweepSpec(suite=suite, model=model, device=device, dtype=dtype, lola_ckpt=lola_ckpt,
                     lambdas=ints("--lambda", lam), windows=ints("--window", window), ctxs=ints("--ctx", ctx),
                     tasks=strs(task), scorers=strs(scorer),
                     feature_maps=strs(feature_map) or (None,), full=full, evict=evict, diagnostics=diagnostics,
                     decode_mode=decode_mode, prefill_logits=prefill_logits,
                     evict_scorers=strs(evict_scorer), evict_at=strs(evict_at), samples=samples, seed=seed,
                     budgets_mib=strs(budget_mib),
                     combine=combine, sinks=sinks, gqa=gqa, chunk=chunk, preset=preset, kernels=kernels_flag(),
                     essay_path=default_essay_path(essay_path),
                     limit=limit,
                     data_dir=data_dir)
    from .commands import check_model

    check_model(ModelSettings(model, device, dtype, lola_ckpt), ("--ctx", list(spec.ctxs)) if suite == "ruler"
                 else None)
    apply_threads(threads)
    out_dir = out or str(default_sweep_dir(spec))
    if launcher is None and any(v is not None for v in (jobs, wait, slurm_partition, slurm_gpus_per_task, slurm_time,
                                                        slurm_array_parallelism, slurm_cpus_per_task, slurm_mem_gb)):
        raise UserError("--jobs, --wait and the --slurm-* flags go with --launcher slurm|local")
    if launcher is not None:
        from .sweep_launch import launched_sweep

        return launched_sweep(spec, out_dir, launcher, shard=shard, jobs=jobs, wait=wait, retry_failed=retry_failed,
                              dry_run=dry_run, slurm_flags=dict(
                                  partition=slurm_partition, gpus_per_task=slurm_gpus_per_task, time=slurm_time,
                                  array_parallelism=slurm_array_parallelism, cpus_per_task=slurm_cpus_per_task,
                                  mem_gb=slurm_mem_gb, params=slurm_param))
    plan = plan_sweep(spec, out_dir, shard=shard, retry_failed=retry_failed)
    if not resume and not dry_run and plan.attrs["done"]:
        raise UserError(f"--no-resume: {out_dir} already holds {plan.attrs['done']} finished cell(s) of this grid "
                        "and a sweep never deletes them; pass a new --out to start over (or drop --no-resume)")
    if dry_run:
        keep = [c for c in ["index", "cell_id", "attn", "window", "lambda", "scorer", "feature_map",
                            *(["evict_at"] if spec.evict_at != ("boundary",) else []), "task", "ctx",
                            *(["budget_mib"] if spec.budgets_mib else []), "status", "eta_s"] if c in plan.columns]
        print_frame(plan, f"sweep {out_dir}: {plan.attrs['done']}/{plan.attrs['total']} done, "
                     f"ETA {format_eta(plan.attrs['eta_s'])}", keep)
        return
    with Bar("sweep", int(plan.attrs["pending"])) as step:
        res = run_sweep(spec, out_dir, shard=shard, retry_failed=retry_failed, progress=step)
    from ..report import render_sweep_result

    try:
        render_sweep_result(res)
    except OSError as e:
        raise UserError(f"could not write the sweep report in {res.out_dir}: {e.strerror or e} (kept: the finished "
                        "cells and sweep.csv; `lola-bench report` renders it again)") from None
    console.print(f"ran {len(res.ran)} cell(s) ({len(res.failed)} failed), {res.skipped} already done")
    if not res.frame.empty:
        cols = [c for c in ["attn", "window", "lambda", "scorer", "evict_at", "task", "ctx", "accuracy", "ttft_s",
                            "cache_mib", "status"] if c in res.frame.columns
                and (c != "evict_at" or res.frame[c].notna().any())]
        print_frame(res.frame, f"sweep {res.out_dir}", cols)
    console.print(f"results: {res.out_dir}")


@app.command()
@user_errors
def report(
    dirs: Annotated[list[str], typer.Argument(help="Sweep directories (with sweep.csv; several are merged), or "
                                              "run directories of one kind: ruler, commonsense, speed or "
                                              "perplexity (with summary.csv; their runs and variants are compared "
                                              "side by side).")],
    out: Annotated[Optional[str], typer.Option("--out", help="Where to write the merged report (required for "
                                               "several directories).")] = None,
):
    """Re-render sweep tables and plots from sweep.csv alone (merging shards), or compare ruler, commonsense, speed
    or perplexity runs (comparison.csv/.md: one column per run and attention variant, and the difference from or
    ratio to full attention of the same run)."""
    from ..report import render_report

    try:
        paths = render_report(dirs, out)
    except OSError as e:
        raise UserError(f"could not write the report: {e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
                        "the results it reads are untouched") from None
    for p in paths:
        console.print(str(p))
