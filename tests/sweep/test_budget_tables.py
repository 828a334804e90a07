"""sweep.md's equal-memory tables (`sweep --budget-mib`): one table per context and budget, every variant with the λ
its budget gave, its accuracy per task, a mean only over the tasks every row finished, and full attention / LoLA
base as references. A fake sweep frame, no model."""

from __future__ import annotations

import pandas as pd

from lola_bench.report import sweep_markdown
from lola_bench.report.budget_tables import budget_tables
from lola_bench.report.sweep_tables import ok_rows
from lola_bench.sweep import SWEEP_COLUMNS

TASKS = ("niah_single_1", "passkey")


def frame(skip=()) -> pd.DataFrame:
    rows = []

    def add(attn, lam, scorer, task, acc, budget=None, evict_at=None):
        if (attn, scorer, evict_at, budget, task) in skip:
            return
        rows.append({"cell_id": f"{len(rows):016x}", "suite": "ruler", "status": "ok", "model": "random:tiny",
                     "attn": attn, "window": None if attn == "full" else 64, "lambda": lam, "scorer": scorer,
                     "feature_map": None if attn in ("full", "evict") else "hedgehog", "evict_at": evict_at,
                     "task": task, "ctx": 2048, "n": 10, "accuracy": acc, "cache_mib": budget or 13.0,
                     "full_kv_mib": 87.0, "budget_mib": budget, "mean_prompt_tokens": 2000})

    for i, task in enumerate(TASKS):
        add("full", None, None, task, 90.0 + i)
        add("base", 0, None, task, 5.0 + i)
        add("evict", 0, "sink", task, 3.0 + i)                  # window + sinks alone: no budget, a reference
        for budget, lam_lola, lam_ev in ((16.0, 35, 227), (40.0, 573, 765)):
            add("lola", lam_lola, "sre", task, budget + 10 * i, budget)
            add("evict", lam_ev, "sink", task, budget / 2 + i, budget)
            add("evict", lam_ev, "snapkv", task, budget / 4 + i, budget, "prompt_end")
    return pd.DataFrame(rows).reindex(columns=[*SWEEP_COLUMNS, "budget_mib"])    # as run.py writes it


def tables(df) -> dict[str, list[list[str]]]:
    """{heading: rows of cells} of the budget sections."""
    out, head = {}, None
    for line in "\n".join(budget_tables(ok_rows(df))).splitlines():
        if line.startswith("### "):
            head = line[4:]
            out[head] = []
        elif head and line.startswith("|") and not line.startswith("|---"):
            out[head].append([c.strip() for c in line.strip("|").split("|")])
    return out


def test_one_table_per_budget_with_each_variant_its_lambda_and_accuracy():
    t = tables(frame())
    assert list(t) == ["ctx 2048, budget 16 MiB", "ctx 2048, budget 40 MiB"]
    head, *rows = t["ctx 2048, budget 40 MiB"]
    assert head == ["variant", "λ", "cache MiB", *TASKS, "mean of 2"]
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows] == ["LoLA", "eviction: StreamingLLM", "eviction: SnapKV",
                                    "full attention (reference, no budget)", "LoLA base (λ=0) (reference, no budget)",
                                    "eviction: StreamingLLM (reference, no budget)"]
    assert by["LoLA"][1:] == ["573", "40.0", "40.0", "50.0", "45.0"]
    assert by["eviction: StreamingLLM"][1] == "765" and by["eviction: StreamingLLM"][3:5] == ["20.0", "21.0"]
    assert by["eviction: SnapKV"][3:5] == ["10.0", "11.0"]
    assert by["full attention (reference, no budget)"][1:3] == ["–", "87.0"]         # full KV size, no λ
    assert by["LoLA base (λ=0) (reference, no budget)"][1] == "0"
    assert t["ctx 2048, budget 16 MiB"][1][1] == "35"                                 # LoLA's λ at 16 MiB


def test_the_mean_covers_only_tasks_every_row_finished():
    t = tables(frame(skip={("evict", "snapkv", "prompt_end", 40.0, "passkey")}))
    head, *rows = t["ctx 2048, budget 40 MiB"]
    assert "mean of 2" not in head and not any(h.startswith("mean") for h in head)    # one common task: no mean
    snap = next(r for r in rows if r[0] == "eviction: SnapKV")
    assert snap[head.index("passkey")] == ""                                           # not run yet: empty
    assert t["ctx 2048, budget 16 MiB"][0][-1] == "mean of 2"                          # the other budget is complete


def test_sweep_md_carries_the_budget_tables_only_when_budgets_ran():
    assert "at equal cache bytes" in sweep_markdown(frame())
    plain = frame().assign(budget_mib=None)
    assert "at equal cache bytes" not in sweep_markdown(plain)


def test_the_pareto_plot_averages_only_tasks_every_point_finished():
    """A variant that has run an easy task the others have not yet must not rise above them on the chart."""
    from lola_bench.report.sweep_plots import pareto_points

    df = frame(skip={("evict", "snapkv", "prompt_end", 40.0, "passkey")})
    d, n_common = pareto_points(ok_rows(df))
    assert n_common[2048] == (1, True)
    lola40 = d[(d["attn"] == "lola") & (d["lambda"] == 573)]["accuracy"].item()
    assert lola40 == 40.0                              # niah_single_1 only, not (40 + 50) / 2
    full = d[d["attn"] == "full"]["accuracy"].item()
    assert full == 90.0
