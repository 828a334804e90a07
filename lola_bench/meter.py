"""Work that must not count towards a running peak-memory measurement.

``evals.timing.PeakMemory`` registers itself in ``ACTIVE`` while it measures; code that runs inside a measured
generation but is not part of it (the needle diagnostics in the layers' prefill hooks) wraps itself in
``unmetered()``, which pauses every running meter: on CUDA the peak reached so far is kept and the allocator's peak
is reset after the excluded work; on CPU the RSS the excluded work added is subtracted from later readings.
"""

from __future__ import annotations

from contextlib import contextmanager

ACTIVE: list = []   # the PeakMemory meters running now


@contextmanager
def unmetered():
    meters = list(ACTIVE)
    for m in meters:
        m.pause()
    try:
        yield
    finally:
        for m in meters:
            m.resume()
