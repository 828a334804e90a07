"""Render the README's generated result tables from the committed result files (never typed by hand).

Each table sits between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` in README.md; this script rewrites
what is between them from the sweep directories under results/sweep/:

    python scripts/readme_results.py            # rewrite README.md
    python scripts/readme_results.py --check    # exit 1 if README.md differs from the result files (tests run this)

NAME: ``suite`` (mean accuracy of the offline RULER suite per context and variant), ``equal-memory`` (every variant
at equal cache bytes, the sweep report's budget tables), ``8k`` (passkey and niah_single_1 at 8K),
``needle-ablation`` (issue #21's table, from the ``lola-bench report`` tables in results/ruler/niah_single_2-ablations),
``cpu-speed`` (the quiet round-robin ``lola-bench speed`` run on the embedded model and the one-layer CPU prefill
breakdown of ``scripts/cpu_prefill_bench.py``, from results/speed/), ``snapkv-miss`` (the samples of the
equal-memory sweep's SnapKV-after-prefill cell at 2K / 40 MiB, and that cell with the needle pinned).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lola_bench.records import frame_to_markdown  # noqa: E402
from lola_bench.report.budget_tables import budget_tables  # noqa: E402
from lola_bench.report.sweep_tables import ok_rows  # noqa: E402

SWEEPS = REPO / "results" / "sweep"
SUITE_TASKS = 12


def _variant(r) -> str:
    """The column a row belongs to, built from the row itself (η, λ, feature map), so a row of another setting gets
    its own column instead of being averaged under a wrong label."""
    if r["attn"] == "full":
        return "full attention"
    w, lam = int(r["window"]), int(r["lambda"])
    if r["attn"] == "evict":
        return f"eviction {r['scorer']} (η = {w}, λ = {lam})"
    if r["attn"] == "base" or lam == 0:
        return f"base (η = {w}, λ = 0)"
    if r["feature_map"] == "hedgehog-identity":
        return f"LoLA training-free (η = {w}, λ = {lam})"
    return f"LoLA (η = {w}, λ = {lam})"


_RANK = ("full attention", "LoLA (", "base (", "LoLA training-free", "eviction")


def _column_order(labels) -> list[str]:
    return sorted(labels, key=lambda v: (next(i for i, p in enumerate(_RANK) if v.startswith(p)), v))


def _rows(name: str) -> pd.DataFrame | None:
    csv = SWEEPS / name / "sweep.csv"
    if not csv.is_file():
        return None
    ok = ok_rows(pd.read_csv(csv))
    return ok.assign(variant=[_variant(r) for _, r in ok.iterrows()]) if len(ok) else None


def _mean_table(ok: pd.DataFrame, tasks_total: int | None) -> str:
    """Rows: contexts; columns: variants; a cell is the mean accuracy over the tasks the variants that have finished
    every task there share (``tasks`` says how many of all); a variant still running there shows its mean over the
    tasks it has finished, and how many (not comparable with the others until it has them all)."""
    cols = _column_order(set(ok["variant"]))
    out = []
    for ctx, g in ok.groupby("ctx", sort=True):
        sets = {v: set(g.loc[g["variant"] == v, "task"]) for v in cols if (g["variant"] == v).any()}
        whole = [t for t in sets.values() if tasks_total and len(t) >= tasks_total]
        common = set.intersection(*(whole or list(sets.values()))) if sets else set()
        hours = pd.to_numeric(g.drop_duplicates("cell_id")["wall_s"], errors="coerce").sum() / 3600
        rec = {"ctx": int(ctx), "tasks": f"{len(common)}/{tasks_total or g['task'].nunique()}",
               "cell hours": f"{hours:.1f}"}
        for v in cols:
            have = sets.get(v, set())
            use = common if common <= have else have
            acc = g[(g["variant"] == v) & g["task"].isin(use)].groupby("task")["accuracy"].mean()
            rec[v] = "" if not len(acc) else f"{acc.mean():.1f}" + (
                "" if use == common else f" ({len(have)}/{len(common)} tasks so far)")
        out.append(rec)
    return frame_to_markdown(pd.DataFrame(out))


def block_suite() -> str:
    ok = _rows("ruler-suite-embedded")
    if ok is None:
        return "(no results yet)"
    return (_mean_table(ok, SUITE_TASKS)
            + "\n`tasks`: how many of the 12 the variants that have finished every task at that context share (the "
              "means cover those); a variant still running there shows its mean over the tasks it has finished so "
              "far, and how many, not comparable with the others yet; an empty cell: that variant has not run there "
              "yet. `cell hours`: the finished cells' `wall_s` summed (one torch thread each, two such jobs sharing 2 "
              "cores).")


def block_8k() -> str:
    ok = _rows("ruler-8k-embedded")
    if ok is None:
        return "(not run yet: `scripts/ruler_suite.sh` runs it after the 4K suite)"
    table = ok.pivot_table(index="task", columns="variant", values="accuracy", aggfunc="mean")
    hours = pd.to_numeric(ok.drop_duplicates("cell_id")["wall_s"], errors="coerce").sum() / 3600
    return (frame_to_markdown(table.rename_axis(None, axis=1).reset_index(), floatfmt=".1f").strip()
            + f"\n\n{ok['cell_id'].nunique()} cells, {hours:.1f} cell hours (`wall_s` summed, one torch thread each).")


def block_equal_memory() -> str:
    csv = SWEEPS / "equal-memory-embedded" / "sweep.csv"
    if not csv.is_file():
        return "(no results yet)"
    df = pd.read_csv(csv)
    sections = budget_tables(ok_rows(df))[2:]                        # the tables, without the sweep.md preamble
    hours = pd.to_numeric(df.drop_duplicates("cell_id")["wall_s"], errors="coerce").sum() / 3600
    return ("\n".join(s.replace("### ", "*", 1).replace(" MiB\n", " MiB*\n", 1) if s.startswith("### ") else s
                       for s in sections).strip()
            + f"\n\n{df['cell_id'].nunique()} cells, {hours:.1f} cell hours (`wall_s` summed, one torch thread "
              "each).")


PINNED_SNAPKV = REPO / "results" / "ruler" / "snapkv-after-prefill-pinned-2k"


def block_snapkv_miss() -> str:
    """The SnapKV-after-prefill cell of the equal-memory sweep at 2K, 40 MiB, niah_single_1 (its samples: answer,
    prediction, the share of (layer, head) pairs holding the first and the last needle token exactly), next to the
    same cell with the needle pinned (``--pin-needle``)."""
    csv = SWEEPS / "equal-memory-embedded" / "sweep.csv"
    if not csv.is_file():
        return "(no results yet)"
    ok = ok_rows(pd.read_csv(csv))
    cell = ok[(ok["attn"] == "evict") & (ok["scorer"] == "snapkv") & (ok["evict_at"] == "prompt_end")
              & (ok["ctx"] == 2048) & (ok["task"] == "niah_single_1") & (ok["budget_mib"] == 40)]
    if len(cell) != 1:
        return "(not run yet)"
    r = cell.iloc[0]
    preds = [json.loads(line) for line in
             (SWEEPS / "equal-memory-embedded" / "cells" / r["cell_id"] / "predictions.jsonl").read_text().splitlines()]
    rows = [{"answer": p["answer"][0], "prediction": "`" + p["prediction"].strip()[:12] + "`", "score": int(p["score"]),
             "first needle token exact": p["needle_exact_share"][0],
             "last needle token exact": p["needle_exact_share"][-1],
             "lowest": min(p["needle_exact_share"])} for p in preds]
    misses = [p for p in preds if p["score"] < 100]
    first_digit = sum(1 for p in misses if p["prediction"].strip()[:1] == p["answer"][0][:1])
    prefix = sum(1 for p in misses if (t := p["prediction"].strip()).endswith(".") and len(t) > 1
                 and p["answer"][0].startswith(t[:-1]))
    first_top = sum(1 for p in misses if p["needle_exact_share"][0] == max(p["needle_exact_share"]))
    out = [f"*SnapKV after prefill, ctx 2048, 40 MiB (λ = {int(r['lambda'])}), niah_single_1* "
           f"(`results/sweep/equal-memory-embedded/cells/{r['cell_id']}`): accuracy {r['accuracy']:.0f}, "
           f"`needle_kept` {r['needle_kept']:.0f}. Of its {len(misses)} misses, {first_digit} begin with the "
           f"number's first digit and {prefix} are a leading part of it and a full stop; in {first_top} the "
           "needle's first token is held exactly in the most (layer, head) pairs.", "",
           frame_to_markdown(pd.DataFrame(rows), floatfmt=".2f").strip()]
    pinned = PINNED_SNAPKV / "summary.csv"
    if pinned.is_file():
        q = pd.read_csv(pinned).iloc[0]
        out += ["", f"The same cell with `--pin-needle` (`results/ruler/{PINNED_SNAPKV.name}`, scorer "
                f"`{q['scorer']}`): accuracy {q['accuracy']:.0f}, `needle_kept` {q['needle_kept']:.0f}."]
    return "\n".join(out)


ABLATIONS = REPO / "results" / "ruler" / "niah_single_2-ablations"
# (label, RULER run, variant prefix, task, passkey run, perplexity run and variant prefix); None: not applicable
NEEDLE_ROWS = [
    ("full attention", "niah_single_2-diagnostics", "full", "niah_single_2", "passkey-sinks4",
     ("smollm2-135m-sinks4-4k", "full")),
    ("base, λ = 0", "niah_single_2-diagnostics", "base", "niah_single_2", "passkey-sinks4",
     ("smollm2-135m-sinks4-4k", "base")),
    ("LoLA, SRE per KV head (default)", "niah_single_2-diagnostics", "lola", "niah_single_2", "passkey-sinks4",
     ("smollm2-135m-sinks4-4k", "lola")),
    ("needle pinned (`--pin-needle`, an oracle)", "pinned-needle", "lola", "niah_single_2", None, None),
    ("selection per query head (`--gqa expanded`)", "per-query-head", "lola", "niah_single_2",
     "per-query-head-passkey", ("per-query-head-perplexity", "lola")),
    ("SRE / ‖v‖ (`--scorer sre_relative`)", "sre-relative", "lola", "niah_single_2", "", ""),
    ("SnapKV-style mass (`--scorer snapkv`)", "scorer-snapkv", "lola", "niah_single_2", "", ""),
    ("H2O-style mass (`--scorer attention`)", "scorer-attention", "lola", "niah_single_2", "", ""),
    ("twice the cache (`--lambda 1024`)", "lambda-1024", "lola", "niah_single_2", "lambda-1024-passkey",
     ("lambda-1024-perplexity", "lola")),
    ("noise haystack (niah_single_1), default", "noise-haystack", "lola", "niah_single_1", None, None),
]


def block_needle_ablation() -> str:
    acc_csv, ppl_csv = ABLATIONS / "table" / "comparison.csv", ABLATIONS / "perplexity" / "comparison.csv"
    if not acc_csv.is_file():
        return "(no results yet: run scripts/needle_ablation.sh)"
    acc = pd.read_csv(acc_csv)
    ppl = pd.read_csv(ppl_csv) if ppl_csv.is_file() else pd.DataFrame(columns=["run", "variant", "perplexity"])

    def row(run, prefix, task, ctx):
        r = acc[(acc["run"] == run) & acc["variant"].str.startswith(prefix) & (acc["task"] == task)
                & (acc["ctx"] == ctx)]
        return None if r.empty else r.iloc[0]

    out = []
    for label, run, prefix, task, pk_run, ppl_src in NEEDLE_ROWS:
        cells = {"variant (flag)": label}
        for ctx in (2048, 4096):
            r = row(run, prefix, task, ctx)
            cells[f"niah_single_2 {ctx // 1024}K"] = "not run" if r is None else f"{r['accuracy']:.0f}"
        r4 = row(run, prefix, task, 4096)
        kept = None if r4 is None else r4["needle_kept"]
        cells["needle kept 4K"] = "–" if kept is None or kept != kept else f"{kept:.0f}%"
        pk = None if not pk_run else row(pk_run, prefix, "passkey", 4096)
        cells["passkey 4K"] = ("–" if pk_run is None else "not run" if pk is None
                               else f"{pk['accuracy']:.0f} (n = {int(pk['n'])})")
        p = None
        if ppl_src:
            m = ppl[(ppl["run"] == ppl_src[0]) & ppl["variant"].str.startswith(ppl_src[1])]
            p = None if m.empty else m.iloc[0]["perplexity"]
        cells["perplexity 4K"] = "–" if ppl_src is None else "not run" if p is None else f"{p:.1f}"
        out.append(cells)
    return frame_to_markdown(pd.DataFrame(out))


SPEED = REPO / "results" / "speed"
SPEED_RUN = "smollm2-135m-cpu-quiet-2026-12-01"   # the newest quiet whole-model run (head on the last position)
# earlier quiet runs of the same measurement, shown as ratios next to it: how much a ratio moves from run to run here
SPEED_OTHER_RUNS = ("smollm2-135m-cpu-quiet-last-logits-5x", "smollm2-135m-cpu-quiet-last-logits",
                    "smollm2-135m-cpu-quiet-roundrobin")
TTFT_TARGETS = {1024: 1.15, 4096: 1.0}                  # issue #16 item 5: LoLA's TTFT / full attention's, at most
# LOLA_CPU_FUSED=0 / 1 (the default), and the default again a week later
LAYER_RUNS = (("off", "fused-0.json"), ("on", "fused-1.json"), ("on", "fused-1-2026-12-01.json"))


def block_cpu_speed() -> str:
    csv = SPEED / SPEED_RUN / "summary.csv"
    if not csv.is_file():
        return "(no results yet)"
    df = pd.read_csv(csv)
    whole = pd.DataFrame({
        "ctx": df["ctx"], "variant": [("full attention" if a == "full" else f"LoLA (η = {int(w)}, λ = {int(lam)})")
                                      for a, w, lam in zip(df["attn"], df["window"].fillna(0), df["lambda"].fillna(0))],
        "threads": df["threads"], "TTFT s (median)": df["ttft_s"].round(2), "TTFT s (min)": df["ttft_min_s"].round(2),
        "TTFT / full": df["ttft_vs_full"].round(3), "decode ms/token": df["decode_ms_per_token"].round(1),
        "implementation": df["implementation"]})
    out = [f"*Whole model* (`results/speed/{SPEED_RUN}`, {int(df['repeats'].iloc[0])} repeats)", "",
           frame_to_markdown(whole).strip(), "", _ttft_targets(df)]
    rows, sre = [], None
    for fused, name in LAYER_RUNS:
        f = SPEED / "cpu-prefill-layer" / name
        if not f.is_file():
            continue
        by = {}
        for r in json.loads(f.read_text())["rows"]:
            by.setdefault((r.get("threads"), r.get("ctx")), {})[r["variant"]] = r
        if "sre matmul per boundary" in by.get((None, None), {}):   # the newest run's, when it has one
            sre = dict(by[None, None]["sre matmul per boundary"], file=name)
        for (threads, ctx), v in sorted((key, v) for key, v in by.items() if key[0] is not None):
            parts = v.get("lola parts (best run)", {})
            one = by.get((1, ctx), {}).get("lola")
            # LoLA's one-thread work split perfectly over the threads, against SDPA on as many: the best any
            # schedule of this work could reach (no core waits, no slowdown from sharing the chip)
            bound = (round(one["min_ms"] / threads / v["sdpa"]["min_ms"], 2)
                     if one is not None and threads > 1 else "–")
            rows.append({"run": name, "fused block attention": fused, "threads": threads, "ctx": ctx,
                         "SDPA ms": round(v["sdpa"]["min_ms"], 1), "LoLA ms": round(v["lola"]["min_ms"], 1),
                         "LoLA pipelined ms": round(v["lola pipelined"]["min_ms"], 1) if "lola pipelined" in v else "–",
                         "selection pass ms": parts.get("selection pass", "–"),
                         "exact prefix ms": parts.get("exact prefix", "–"),
                         "attention blocks ms": parts.get("attention blocks", "–"),
                         "bound / SDPA": bound})
    if rows:
        out += ["", "*One layer* (`results/speed/cpu-prefill-layer/`: minima; the parts are those of the plain "
                "path's best run; `bound / SDPA`: LoLA's one-thread time divided by the threads, over SDPA's time "
                "with them, the ratio a perfect split of LoLA's work over the cores would reach)", "",
                frame_to_markdown(pd.DataFrame(rows)).strip()]
    if sre is not None:
        hq, d1, feat, cand = sre["shape"]
        out += ["", f"The selection's largest op, one boundary's SRE matmul ({hq} query heads x ({d1} x {feat}) x "
                f"({feat} x {cand} candidates), one thread, `{sre['file']}`): {sre['alone_us']:.0f} µs alone, "
                f"{sre['gflops_alone']:.0f} GFLOP/s, {100 * sre['gflops_alone'] / sre['core_mm_gflops']:.0f}% of "
                f"this core's rate on a 1024 x 1024 matmul; {sre['other_core_busy_us']:.0f} µs while the other "
                "core runs a matmul."]
    return "\n".join(out)


def _ratios(df: pd.DataFrame) -> dict[int, float]:
    lola = df[df["attn"] == "lola"]
    return {int(c): float(r) for c, r in zip(lola["ctx"], lola["ttft_vs_full"])}


def _ttft_targets(df: pd.DataFrame) -> str:
    """Issue #16's CPU TTFT targets against this run's medians, and the same ratios in the earlier quiet runs."""
    got = _ratios(df)
    parts = [f"{c}: {got[c]:.3f}x (target <= {t:g}x: {'met' if got[c] <= t else 'not met'})"
             for c, t in TTFT_TARGETS.items() if c in got]
    others = []
    for name in SPEED_OTHER_RUNS:
        f = SPEED / name / "summary.csv"
        if f.is_file():
            o = pd.read_csv(f)
            head = "every" if "prefill_logits" not in o.columns else "the last"
            r = _ratios(o)
            others.append(f"`{name}` ({int(o['repeats'].iloc[0])} repeats, head on {head} prompt position): "
                          + ", ".join(f"{c}: {r[c]:.3f}x" for c in TTFT_TARGETS if c in r))
    return ("LoLA's TTFT / full attention's (medians): " + "; ".join(parts) + "."
            + (" Earlier quiet runs: " + "; ".join(others) + "." if others else ""))


BLOCKS = {"suite": block_suite, "equal-memory": block_equal_memory, "8k": block_8k,
          "needle-ablation": block_needle_ablation, "cpu-speed": block_cpu_speed, "snapkv-miss": block_snapkv_miss}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        tag = re.escape(name)
        pat = re.compile(rf"(<!-- results:{tag} -->\n)(?:.*?\n)?(<!-- /results:{tag} -->)", re.S)
        if not pat.search(text):
            raise SystemExit(f"README.md has no <!-- results:{name} --> ... <!-- /results:{name} --> block")
        body = make().strip()
        text = pat.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is not what the result files give")
    ap.add_argument("--readme", type=Path, default=REPO / "README.md", help="the file to render (default README.md)")
    args = ap.parse_args(argv)
    old = args.readme.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.readme} is stale: run python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
