"""Tables and plots from result records (temporarily one module, sweep_plots.py; split next)."""

from .sweep_plots import (  # noqa: F401
    COMPARISON_NOTE,
    commonsense_comparison,
    depth_heatmaps,
    exactness_note,
    pareto_frontier,
    render_commonsense_report,
    render_report,
    render_sweep_report,
    sweep_markdown,
    sweep_plots,
)
