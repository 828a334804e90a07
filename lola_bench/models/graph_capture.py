"""Recording work as a CUDA graph, for the decode paths that replay it (``evals.graphed_decode``, and the steady
chunk-boundary merge of ``models.static_cache``)."""

from __future__ import annotations

import torch


def capture(step, stream) -> torch.cuda.CUDAGraph:
    """``step`` recorded (not run) as a CUDA graph on ``stream``. As ``torch.cuda.graph`` does, without its
    ``empty_cache()``: a generation captures once per sample, and emptying the allocator's cache each time would make
    the next sample's prefill allocate afresh (a TTFT the eager loop never pays)."""
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream):
        g.capture_begin()
        try:
            step()
        except BaseException:
            try:
                g.capture_end()
            except Exception:               # noqa: BLE001 - the capture is already broken; report the first error
                pass
            raise
        g.capture_end()
    return g


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for a row's error column."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
