"""ruler's device-sized defaults: the sample count when --samples is not given, the run-time estimate, --dry-run."""

from __future__ import annotations

from .display import console, err_console

CPU_SAMPLES, GPU_SAMPLES = 10, 100

# Seconds per processed token (prompt + generated), per variant, for the embedded SmolLM2-135M: on CPU measured on a
# 2-core machine (about an hour for 3 variants x 100 samples at 4096 tokens, issue #23); on GPU an order-of-magnitude
# guess. A rough constant: other models scale roughly with their parameter count, so this is only an estimate.
SECONDS_PER_TOKEN = {"cpu": 3e-3, "cuda": 1e-4}


def default_samples(device: str) -> int:
    return CPU_SAMPLES if device == "cpu" else GPU_SAMPLES


def estimate_seconds(variants, rs, device: str) -> float:
    per_token = SECONDS_PER_TOKEN["cpu" if device == "cpu" else "cuda"]
    return len(variants) * len(rs.tasks) * sum(rs.ctxs) * rs.samples * per_token


def _eta(seconds: float) -> str:
    from ..sweep import format_eta

    return format_eta(seconds)


def samples_hint(variants, rs, device: str) -> None:
    """One line: the CPU default sample count and the full-size command (on stderr, before the model loads)."""
    if device != "cpu":
        return
    full = estimate_seconds(variants, rs, device) * GPU_SAMPLES / rs.samples
    err_console.print(f"[yellow]--samples not given: {rs.samples} per task and context on CPU (estimated "
                      f"{_eta(estimate_seconds(variants, rs, device))}); the full-size run is this command with "
                      f"--samples {GPU_SAMPLES} (estimated {_eta(full)})[/]", highlight=False, soft_wrap=True)


def print_plan(variants, rs, device: str, auto_samples: bool) -> None:
    """ruler --dry-run: the cells, the samples and an estimated run time; nothing is loaded."""
    console.print(f"plan: {len(variants)} variant(s) x {len(rs.tasks)} task(s) x {len(rs.ctxs)} context(s) = "
                  f"{len(variants) * len(rs.tasks) * len(rs.ctxs)} cell(s), {rs.samples} sample(s) each"
                  f"{' (CPU default; --samples to change)' if auto_samples and device == 'cpu' else ''}",
                  highlight=False)
    from ..evals.ruler_bench import describe_variants

    for line in describe_variants(variants):
        console.print(f"  {line}", highlight=False)
    console.print(f"  tasks: {', '.join(rs.tasks)}", highlight=False)
    console.print(f"  contexts: {', '.join(str(c) for c in rs.ctxs)}", highlight=False)
    from ..evals.timing import graphed_decode_on

    graphed = graphed_decode_on(rs.decode_mode, device)
    console.print(f"  decode: {'static cache, one step captured as a CUDA graph' if graphed else 'eager'}"
                  f"{' (eagerly off CUDA)' if graphed and device != 'cuda' else ''} (--decode-mode {rs.decode_mode})",
                  highlight=False)
    console.print(f"estimated run time on {device}: {_eta(estimate_seconds(variants, rs, device))} (an estimate: "
                  f"{SECONDS_PER_TOKEN['cpu' if device == 'cpu' else 'cuda'] * 1000:g} ms per token per variant, "
                  "measured for SmolLM2-135M; other models and machines differ)", highlight=False)
