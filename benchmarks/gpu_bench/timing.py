"""Timing for the benchmark: the run's wall-clock budget, synchronized host timing, CUDA events and graphs,
peak memory."""

from __future__ import annotations

import statistics
import time

import torch

MIB = 1024 * 1024


class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def host_times(fn, device: str, warmup: int = 1, reps: int = 3) -> list[float]:
    """Seconds per call, synchronized before and after each call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench_us(fn, device: str) -> float:
    """Median microseconds per call: triton.testing.do_bench on CUDA (events, warm-up, L2 flushed before each
    call), synchronized host timing elsewhere."""
    if device == "cuda":
        from triton.testing import do_bench

        return 1000.0 * do_bench(fn, warmup=25, rep=200, return_mode="median")
    return 1e6 * statistics.median(host_times(fn, device, warmup=1, reps=3))


def bench_graph_us(fn, iters: int = 50) -> dict:
    """Capture ``fn`` in a CUDA graph; median us per replay with the L2 flushed before each replay (cold), and
    the mean over back-to-back replays (warm: state may stay in L2)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    flush = torch.empty(256 * MIB, dtype=torch.int8, device="cuda")
    cold = []
    for _ in range(iters):
        flush.zero_()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        cold.append(1000.0 * e0.elapsed_time(e1))
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return {"cold_us": statistics.median(cold), "warm_us": 1000.0 * e0.elapsed_time(e1) / iters}


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / MIB, 1) if device == "cuda" else None
