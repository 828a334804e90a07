"""The batched prefill as a two-thread pipeline, for CPUs with two or more torch threads.

The selection pass (``selection.select_all``) is a chain of dependent chunk boundaries, each a few small tensor ops
around one matmul: a second core barely speeds it up, while the attention of the chunks (large matmuls and a softmax)
would use it well. So the pass runs on a worker thread while the calling thread computes phi(k) of the keys that will
leave the window (ahead of the pass, which reads them), answers the exact prefix and then every block of chunks whose
boundaries are done; once the pass is over both threads share the remaining blocks. Each thread runs its ops with one
intra-op thread (``torch.set_num_threads`` is per thread; the caller's count is restored), so two cores run two
streams of work instead of splitting many small ops. The math is ``batched.lola_batched``'s: the same selection and
final state, outputs equal up to float rounding (blocks and phi(k) pieces are cut differently). Which thread takes
which block depends on timing, so the rounding can differ from run to run; in a model a rounding difference in one
layer's output can flip a near-tied selection in a later layer. ``LOLA_CPU_PIPELINE=0`` gives bit-reproducible runs.

``LOLA_CPU_PIPELINE=0`` turns it off (the plain batched path with the caller's threads), ``=1`` forces it whenever
two or more threads are set; unset, it runs when at least ``MIN_CHUNKS`` chunks of queries are left after the exact
prefix (on a loaded 2-core CPU it was clearly faster with 54 such chunks, as fast or slower with 6 to 22).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from .batched import Window, attend_block, attended_segments, chunks_per_block, exact_prefix, softmax_prefix
from .common import LolaParams
from .selection import PhiRows, Table, build_table, leaving_rows, segment_bounds, select_all
from .state import LolaState

MIN_CHUNKS = 16          # attended chunks from which the pipeline runs by default
BLOCK_ELEMS = 1 << 21    # logits per block while the pass runs (fewer, larger ops: less contention for the GIL)
SHARED_PHI = 0.5         # share of the leaving keys whose phi(k) the calling thread computes for the pass

_pool: tuple[int, ThreadPoolExecutor] | None = None     # (pid that made it, the pool): a forked child makes its own
_pool_lock = threading.Lock()


def use_pipeline(q: torch.Tensor, state: LolaState, params: LolaParams) -> bool:
    """Whether ``lola_batched`` runs as the pipeline: on CPU, with two or more torch threads, outside autograd, and
    per ``LOLA_CPU_PIPELINE`` (see the module docstring)."""
    mode = os.environ.get("LOLA_CPU_PIPELINE", "").strip().lower()
    if mode in ("0", "false", "no", "off") or q.device.type != "cpu" or torch.get_num_threads() < 2:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, params.window_factors)):
        return False
    n = q.shape[2] - exact_prefix(state.pos, q.shape[2], params)
    return n >= (2 if mode in ("1", "true", "yes", "on") else MIN_CHUNKS) * params.cfg.chunk_size


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="lola-selection"))
        return _pool[1]


class _SharedPhi(PhiRows):
    """phi(k) of the leaving rows: the first ``SHARED_PHI`` of them computed in pieces by the calling thread
    (``fill``) while the pass reads them, the rest by the pass itself as usual."""

    def __init__(self, tab: Table, params: LolaParams, sd: torch.dtype, rows_end: int):
        super().__init__(tab, params, sd, rows_end)
        b, hs = tab.k.shape[:2]
        self.split = int(rows_end * SHARED_PHI)
        self.shared = torch.empty(b, hs * self.group, self.split, self.fmap.feature_dim, dtype=sd, device=tab.k.device)
        self.ready, self.failed, self.cond = 0, False, threading.Condition()

    def fill(self) -> None:
        b, hs = self.k.shape[:2]
        piece = max(1, (256 * 1024) // (b * hs * self.group * self.fmap.feature_dim * 4))
        try:
            for lo in range(0, self.split, piece):
                hi = min(self.split, lo + piece)
                self.shared[:, :, lo:hi] = self.compute(lo, hi)
                with self.cond:
                    self.ready = hi
                    self.cond.notify_all()
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        if lo >= self.split:
            return super().rows(lo, hi)
        top = min(hi, self.split)
        with self.cond:
            self.cond.wait_for(lambda: self.ready >= top or self.failed)
            if self.ready < top:
                raise RuntimeError("phi(k) of the leaving keys was not computed")
        if hi <= self.split:
            return self.shared[:, :, lo:hi]
        return torch.cat([self.shared[:, :, lo:], super().rows(self.split, hi)], dim=2)


class _Blocks:
    """The attended segments of one call, handed out in blocks to whichever thread asks, once they are recorded:
    up to ``step`` segments while the pass runs, then the rest split between the two threads."""

    def __init__(self, q: torch.Tensor, out: torch.Tensor, tab: Table, params: LolaParams, start: int, prefix: int):
        self.q, self.out, self.params, self.start = q, out, params, start
        bounds = segment_bounds(start, q.shape[2], params.cfg)
        self.n_pre = sum(1 for lo, _, _ in bounds if lo < start + prefix)         # segments of the prefix
        self.n_att = len(bounds) - self.n_pre
        self.window = Window(bounds[self.n_pre:], tab.p0, tab.ns0, tab.pos.shape[2], params, q.device)
        # at least four blocks, so that the two threads can share the last ones
        self.step = min(chunks_per_block(q, tab.pos.shape[2], params, BLOCK_ELEMS), -(-self.n_att // 4))
        self.cond = threading.Condition()
        self.tab = tab
        self.ready = 0                  # attended segments recorded so far
        self.done = False               # the selection pass is over (or failed: error)
        self.error: BaseException | None = None
        self.next = 0                   # the first attended segment not handed out yet

    def published(self, tab: Table) -> None:
        with self.cond:
            self.ready = max(0, len(tab.segments) - self.n_pre)
            self.cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self.cond:
            self.done, self.error = True, error
            if error is not None:
                self.next = self.n_att          # nobody starts another block
            self.cond.notify_all()

    def _claim(self):
        """(index, segments) of the next block, once recorded; None when none is left (or the pass failed)."""
        with self.cond:
            left = self.n_att - self.next
            if left <= 0:
                return None
            self.cond.wait_for(lambda: self.ready - self.next >= min(self.step, self.n_att - self.next) or self.done)
            left = self.n_att - self.next
            if self.error is not None or left <= 0:
                return None
            n = min(self.step, self.ready - self.next) if not self.done else min(self.step, -(-left // 2))
            j, self.next = self.next, self.next + n
        return j, self.tab.segments[self.n_pre + j:self.n_pre + j + n]

    def attend(self) -> None:
        """Answer blocks until none is left."""
        work: dict = {}
        while (claim := self._claim()) is not None:
            j, block = claim
            lo, hi = block[0].lo - self.start, block[-1].hi - self.start
            self.out[:, :, lo:hi] = attend_block(self.q[:, :, lo:hi], self.tab, block, self.params, work,
                                                 self.window.part(j, len(block)))


PIPELINE_NAME = "CPU two-thread pipeline"   # what a layer's implementation name gains when a prefill ran here
_runs = threading.local()


def pipeline_runs() -> int:
    """How many ``lola_pipelined`` calls this thread has made (the model's layers read it around a prefill call to
    name the implementation that ran)."""
    return getattr(_runs, "n", 0)


def lola_pipelined(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                   params: LolaParams) -> torch.Tensor:
    """``batched.lola_batched`` with the selection pass on a worker thread (see the module docstring)."""
    _runs.n = pipeline_runs() + 1
    start, L = state.pos, q.shape[2]
    prefix = exact_prefix(start, L, params)
    out = torch.empty_like(q)
    tab = build_table(k, v, state, params)
    phi = _SharedPhi(tab, params, state.H.dtype, leaving_rows(tab, start, L, params.cfg)) if params.cfg.fold else None
    blocks = _Blocks(q, out, tab, params, start, prefix)
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    def worker() -> None:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            try:
                select_all(k, v, state, params, on_segment=blocks.published, table=tab, phi=phi)
                attended_segments(tab, start + prefix)          # checks where the prefix ends
            except BaseException as e:
                blocks.finish(e)
                raise
            blocks.finish()
            blocks.attend()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        job = _executor().submit(worker)
        try:
            if phi is not None:
                phi.fill()
            if prefix:
                out[:, :, :prefix] = softmax_prefix(q[:, :, :prefix], k[:, :, :prefix], v[:, :, :prefix])
            blocks.attend()
        except BaseException as e:
            if phi is not None:
                phi.abort()
            blocks.finish(e)    # the worker stops after its current step
            job.exception()
            raise
        job.result()
    finally:
        torch.set_num_threads(threads)
    return out
