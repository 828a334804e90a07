"""Greedy generation with synchronized timers (TTFT, decode ms/token) and peak memory.

TTFT = prefill of the prompt + the first generated token. Decode time is averaged over the remaining
generated tokens. Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU the growth of the
process RSS over the call, sampled every 2 ms by a background thread (a lower bound of the true peak).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil
import torch

from .. import meter
from ..errors import UserError
from ..models.cache import LolaCache
from ..models.patch import is_patched, new_cache
from ..settings import DECODE_MODES

EAGER_DECODE = "eager (one forward per token)"


def graphed_decode_on(mode: str, device: str) -> bool:
    """Whether ``mode`` (``--decode-mode``) decodes with a static cache and one captured step replayed
    (``graphed_decode``): ``graphed``, or ``auto`` on CUDA; ``eager``: one forward per token through the variant's
    own cache."""
    if mode not in DECODE_MODES:
        raise UserError(f"unknown --decode-mode {mode!r}: choose {', '.join(DECODE_MODES)}")
    return mode == "graphed" or (mode == "auto" and str(device).startswith("cuda"))


@dataclass
class GenResult:
    tokens: list[int]
    n_prompt: int
    ttft_s: float
    decode_s_per_token: float | None
    peak_mem_bytes: int
    cache_bytes: dict[str, int] = field(default_factory=dict)
    decode_impl: str | None = EAGER_DECODE       # how the decode steps ran (None: no decode step)
    decode_setup_s: float = 0.0                  # graphed: static cache copy + warm-up + capture (in no timing)


class PeakMemory:
    """Context manager measuring peak memory growth (CUDA allocator or CPU RSS). Work wrapped in
    ``meter.unmetered()`` while it runs does not count (see lola_bench/meter.py)."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.peak = 0

    def __enter__(self):
        self.pre, self.offset, self.paused = 0, 0, False
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc = psutil.Process()
            self.base = self.proc.memory_info().rss
            self.high = self.base
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        meter.ACTIVE.append(self)
        return self

    def _rss(self) -> int:
        return self.proc.memory_info().rss - self.offset

    def _poll(self):
        while not self.stop.is_set():
            if not self.paused:
                self.high = max(self.high, self._rss())
            self.stop.wait(0.002)

    def pause(self) -> None:
        """Stop counting (``meter.unmetered``): keep the peak so far."""
        if self.cuda:
            torch.cuda.synchronize()
            self.pre = max(self.pre, torch.cuda.max_memory_allocated())
        else:
            self.high = max(self.high, self._rss())
            self.paused, self.rss_at_pause = True, self.proc.memory_info().rss

    def resume(self) -> None:
        """Count again, without what the excluded work allocated."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.offset += max(0, self.proc.memory_info().rss - self.rss_at_pause)
            self.paused = False

    def __exit__(self, *exc):
        if self in meter.ACTIVE:
            meter.ACTIVE.remove(self)
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = max(self.pre, torch.cuda.max_memory_allocated()) - self.base
        else:
            self.stop.set()
            self.thread.join()
            self.high = max(self.high, self._rss())
            self.peak = self.high - self.base
        return False


def _sync(device: str):
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def dynamic_cache_bytes(cache) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


PREFILL_LOGITS = ("last", "all")     # --prefill-logits: the head on the last prompt position, or on every one


def prefill_logits(model, input_ids: torch.Tensor, cache, keep: str = "last") -> torch.Tensor:
    """The prompt through ``model`` into ``cache``: the last position's logits (B, V). ``keep="last"`` applies the
    output head to the last position only, as ``generate()`` does; ``"all"`` to every prompt position, as every
    lola-bench ruler cell measured before ``--prefill-logits`` existed (TTFT and peak memory then include the head
    over the whole prompt). ``greedy_generate`` and ``graphed_generate`` both prefill here, so their TTFT, peak memory
    and first token cannot drift apart."""
    if keep not in PREFILL_LOGITS:
        raise ValueError(f"prefill logits {keep!r}: choose {' or '.join(PREFILL_LOGITS)}")
    extra = {"logits_to_keep": 1} if keep == "last" else {}
    return model(input_ids, cache=cache, use_cache=True, **extra).logits[:, -1]


@torch.no_grad()
def greedy_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int],
                    device: str = "cpu", logits: str = "last") -> GenResult:
    """Greedy decoding with a hand-written loop so that prefill and each decode step are timed separately.
    ``logits``: the prefill's output head on the ``last`` prompt position or on ``all`` (``prefill_logits``)."""
    from transformers import DynamicCache

    input_ids = input_ids.to(device)
    cache = new_cache(model) if is_patched(model) else DynamicCache(config=model.config)
    tokens: list[int] = []
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        logits = prefill_logits(model, input_ids, cache, logits)
        nxt = int(logits.argmax(-1))
        _sync(device)
        ttft = time.perf_counter() - t0
        tokens.append(nxt)
        t1 = time.perf_counter()
        steps = 0
        while len(tokens) < max_new_tokens and nxt not in eos_ids:
            step = torch.tensor([[nxt]], device=device)
            logits = model(step, cache=cache, use_cache=True).logits[:, -1]
            nxt = int(logits.argmax(-1))
            tokens.append(nxt)
            steps += 1
        _sync(device)
        dec = (time.perf_counter() - t1) / steps if steps else None
    if isinstance(cache, LolaCache):
        cb = cache.nbytes_by_tier()
    else:
        cb = {"full_kv": dynamic_cache_bytes(cache)}
    return GenResult(tokens=tokens, n_prompt=int(input_ids.shape[1]), ttft_s=ttft, decode_s_per_token=dec,
                     peak_mem_bytes=int(mem.peak), cache_bytes=cb, decode_impl=EAGER_DECODE if steps else None)


def eos_token_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        e = getattr(src, "eos_token_id", None)
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(int(x) for x in e)
    return ids
