"""Tables and plots from result records (CSV/JSONL only, so reports can be re-rendered any time).

Modules (the report reads the sweep store; lola_bench.sweep never imports the report):
  ruler         accuracy vs context (Wilson error bars), depth x context heatmaps (n per cell); accuracy vs
                needle_kept; exactness_note (how long a prompt must be before LoLA differs)
  commonsense   commonsense runs side by side (comparison.csv / .md)
  ruler_compare, metric_compare   ruler / speed and perplexity runs side by side
  sweep_tables  sweep.md: accuracy / TTFT / memory pivots by λ × η
  sweep_plots   accuracy vs cache (Pareto frontier), TTFT and memory vs λ, accuracy vs ctx
  budget_tables, budget_plot   equal-memory sweeps (--budget-mib): a table and a bar panel per context x budget
  family_style  one colour / marker per variant family, shared by every sweep plot
  render        render_sweep_report (sweep.md + plots), render_sweep_result (the same after run_sweep, when it
                ran cells or sweep.md is missing), render_report (re-render / merge from sweep.csv)
"""

from .commonsense import COMPARISON_NOTE, commonsense_comparison, render_commonsense_report
from .render import render_report, render_sweep_report, render_sweep_result
from .ruler import accuracy_plot, depth_heatmaps, exactness_note, needle_kept_plot
from .sweep_plots import pareto_frontier, sweep_plots
from .sweep_tables import sweep_markdown

__all__ = [
    "COMPARISON_NOTE", "accuracy_plot", "commonsense_comparison", "depth_heatmaps", "exactness_note",
    "needle_kept_plot", "pareto_frontier",
    "render_commonsense_report", "render_report", "render_sweep_report", "render_sweep_result", "sweep_markdown",
    "sweep_plots",
]
