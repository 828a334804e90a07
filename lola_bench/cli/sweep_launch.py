"""sweep --launcher slurm|local: parse the launcher flags, submit (lola_bench.sweep.launch), print the jobs."""

from __future__ import annotations

from ..errors import UserError
from .display import console, print_frame


def launched_sweep(spec, out_dir: str, launcher: str, *, shard, jobs, wait, retry_failed: bool, dry_run: bool,
                   slurm_flags: dict) -> None:
    from ..sweep import format_eta, plan_sweep
    from ..sweep.launch import (
        SlurmOptions,
        check_launcher,
        launch_sweep,
        parse_slurm_params,
        parse_slurm_time,
        sbatch_script,
    )

    f = slurm_flags
    for name, value in (("--jobs", jobs), ("--slurm-gpus-per-task", f["gpus_per_task"]),
                        ("--slurm-array-parallelism", f["array_parallelism"]),
                        ("--slurm-cpus-per-task", f["cpus_per_task"]), ("--slurm-mem-gb", f["mem_gb"])):
        if value is not None and value < (0 if name == "--slurm-gpus-per-task" else 1):
            raise UserError(f"{name} must be >= {0 if name == '--slurm-gpus-per-task' else 1}, got {value}")
    slurm = SlurmOptions(partition=f["partition"], gpus_per_task=f["gpus_per_task"], time_min=parse_slurm_time(
        f["time"]), array_parallelism=f["array_parallelism"], extra=parse_slurm_params(f["params"]),
        cpus_per_task=f["cpus_per_task"], mem_gb=f["mem_gb"])
    if dry_run:
        plan = plan_sweep(spec, out_dir, shard=shard, retry_failed=retry_failed)
        pending = int(plan.attrs["pending"])
        tasks = min(jobs or pending, pending)
        keep = [c for c in ["index", "cell_id", "attn", "window", "lambda", "scorer", "task", "ctx", "status"]
                if c in plan.columns]
        print_frame(plan, f"sweep {out_dir}: {plan.attrs['done']}/{plan.attrs['total']} done; {pending} pending "
                    f"cell(s) would go to {tasks} {launcher} array task(s), ETA of one cell after another "
                    f"{format_eta(plan.attrs['eta_s'])}", keep)
        if launcher == "slurm" and tasks:
            console.print(sbatch_script(slurm, f"{out_dir}/jobs/submitit/%j", tasks), highlight=False, markup=False)
        return
    check_launcher(launcher)
    res = launch_sweep(spec, out_dir, launcher=launcher, shard=shard, jobs=jobs, retry_failed=retry_failed,
                       slurm=slurm, wait=wait)
    for rec in res.failed_jobs:
        console.print(f"job {rec['job_id']} ended {rec['state']} with {len(rec['open_cells'])} cell(s) unfinished"
                      f"{': ' + rec['error'] if rec.get('error') else ''} (log: {rec['stderr']}); "
                      + ("resubmitted" if not res.waited else "rerun the same command to resubmit them"),
                      highlight=False)
    for rec in res.running:
        console.print(f"job {rec['job_id']} still {rec['state']}: its {len(rec['open_cells'])} cell(s) are left to "
                      "it", highlight=False)
    if res.submitted:
        ids = [r["job_id"] for r in res.submitted]
        console.print(f"submitted {len(ids)} {launcher} job(s) for {sum(len(r['cells']) for r in res.submitted)} "
                      f"cell(s): {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''} (logs in "
                      f"{out_dir}/jobs/submitit; records in {out_dir}/jobs/jobs.csv)", highlight=False)
    elif not res.running:
        console.print("nothing to submit: every cell is done" + ("" if not retry_failed else " and ok"))
    if not res.waited and res.submitted:
        console.print("rerun the same command to merge the finished cells and resubmit any that did not finish")
    from ..report import render_sweep_result

    try:
        render_sweep_result(res.sweep)
    except OSError as e:
        raise UserError(f"could not write the sweep report in {out_dir}: {e.strerror or e} (kept: the finished "
                        "cells and sweep.csv; `lola-bench report` renders it again)") from None
    if not res.sweep.frame.empty:
        cols = [c for c in ["attn", "window", "lambda", "scorer", "evict_at", "task", "ctx", "accuracy", "cache_mib",
                            "status"] if c in res.sweep.frame.columns
                and (c != "evict_at" or res.sweep.frame[c].notna().any())]
        print_frame(res.sweep.frame, f"sweep {out_dir}", cols)
    console.print(f"results: {out_dir}")
