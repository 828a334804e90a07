"""Greedy generation whose decode runs the way ``graphed_decode`` times it (issue #16 item 4): what ``ruler`` and
``sweep`` use on CUDA by default (``--decode-mode``), so that their ``decode_ms_per_token`` measures the model rather
than the host.

The prompt is prefilled exactly as ``timing.greedy_generate`` prefills it (the variant's own cache: a DynamicCache
for full attention, a LolaCache for LoLA and eviction), so TTFT and the prefill's selections do not depend on the
decode mode. The prefilled cache is then copied into a static one (full attention: transformers' ``StaticCache``;
LoLA: ``models.static_cache``, exact), and the decode step (token and position in device buffers) runs a few warm-up
steps, is captured once as a CUDA graph and replayed per token until an end-of-sequence id or ``max_new_tokens``;
LoLA's chunk-boundary merge runs eagerly between replays. Off CUDA the same static step runs eagerly. The copy, the
warm-up and the capture are in no timing (``decode_setup_s``); ``decode_s_per_token`` is the mean over the replayed
steps (None when the generation ended before them). A LoLA configuration without a static state (``evict_at =
prompt_end``, attention-mass scorers, the needle oracle) decodes eagerly through its LolaCache, and full attention
with sliding-window layers through its DynamicCache; ``decode_impl`` says so and why.

What differs from the eager loop, besides the host overhead it removes: ``decode_s_per_token`` leaves out the first
decode steps (the warm-up), so a sample needs more than ``1 + N_WARM`` tokens to have one, and a cell's median can
cover fewer samples than the eager cell's; the tokens are the eager loop's in fp32 (tested on CPU and checked on
the device by ``scripts/gpu_bench.py``), while in bf16 the static cache's masked attention over its whole length and
LoLA's fixed-grid decode kernel round differently from the eager path and can flip a near-tied greedy token.
"""

from __future__ import annotations

import time

import torch

from ..models.cache import LolaCache
from ..models.patch import is_patched, new_cache
from .graphed_decode import decode_step, forward_kw, own_cache_step, static_lola, step_kernels, timed_steps
from .timing import GenResult, PeakMemory, _sync, dynamic_cache_bytes, prefill_logits

N_WARM = 2          # eager steps before the capture (allocator, lazy init, autotuning), part of the generation


def static_full_cache(model, cache, max_len: int):
    """transformers' StaticCache of ``max_len`` positions holding a prefilled DynamicCache's keys and values. Consumes
    ``cache``: each layer's tensors are dropped once copied, so the copy adds one layer to the peak memory, not a
    second K/V cache (which the eager loop never holds)."""
    from transformers import StaticCache

    out = StaticCache(config=model.config, max_cache_len=max_len)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys, layer.values, i)
        layer.keys = layer.values = None
    return out


def static_full_reason(model) -> str | None:
    """Why full attention has no capturable static cache (None when it has one): transformers' sliding-window static
    layers keep their length in a host int that a replay does not advance (a replay past the window would write out
    of bounds)."""
    cfg = model.config
    types = getattr(cfg, "layer_types", None) or []
    if getattr(cfg, "sliding_window", None) is not None or any(t != "full_attention" for t in types):
        return "sliding-window layers: transformers' static layer keeps its length on the host"
    return None


@torch.no_grad()
def graphed_generate(model, input_ids: torch.Tensor, max_new_tokens: int, eos_ids: set[int], device: str = "cuda",
                     graph: bool = True, no_static: str | None = None, logits: str = "last") -> GenResult:
    """Greedy decoding as ``greedy_generate`` (same tokens), decode steps on a static cache, captured and replayed
    on CUDA when ``graph`` (module docstring). ``no_static``: a reason to decode eagerly through the variant's own
    cache instead (the caller knows, e.g. the needle oracle pins its selection in the eager merge)."""
    from transformers import DynamicCache

    from ..models.static_cache import static_reason

    input_ids = input_ids.to(device)
    L = int(input_ids.shape[1])
    kw = forward_kw(model)
    patched = is_patched(model)
    cache = new_cache(model) if patched else DynamicCache(config=model.config)
    reason = no_static or (static_reason(model) if patched else static_full_reason(model))
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        tok = prefill_logits(model, input_ids, cache, logits).argmax(-1, keepdim=True)
        _sync(device)
        ttft = time.perf_counter() - t0
        tokens = [int(tok)]
        remaining = max_new_tokens - 1
        t = {"dt": None, "steps": 0, "how": "eager", "why": None, "capture_error": None}
        setup = 0.0
        kind = "static cache"
        if remaining > 0 and tokens[-1] not in eos_ids:
            t1 = time.perf_counter()
            max_len = L + max_new_tokens + 1
            before, after = None, None
            if reason:
                kind, use_kernels = type(cache).__name__, None
                step = own_cache_step(model, cache, tok, kw)
            elif patched:
                cache, evict, _merge, use_kernels = static_lola(model, cache, max_len)
                pos = torch.tensor([L], device=device)
                step = decode_step(model, cache, tok, pos, kw)
                before, after = (lambda c=cache, e=evict: c.prepare(e)), cache.advance_host
            else:
                cache, use_kernels = static_full_cache(model, cache, max_len), None
                step = decode_step(model, cache, tok, torch.tensor([L], device=device), kw)
            setup = time.perf_counter() - t1
            warm = min(N_WARM, remaining)
            t2 = time.perf_counter()
            if use_kernels is None:
                t = timed_steps(step, tok, device, graph and not reason, warm, remaining - warm, True, tokens,
                                before, after, eos=eos_ids)
            else:
                with step_kernels(model, use_kernels):
                    t = timed_steps(step, tok, device, graph, warm, remaining - warm, True, tokens, before, after,
                                    eos=eos_ids)
            decoded = time.perf_counter() - t2
            setup += decoded - (t["dt"] or 0.0) * t["steps"]        # warm-up and capture, not the timed steps
    why = f"no static state: {reason}" if reason else t["why"]
    impl = None if len(tokens) == 1 else f"{kind}, {t['how']}" + (f" ({why})" if why else "")
    return GenResult(tokens=tokens, n_prompt=L, ttft_s=ttft, decode_s_per_token=t["dt"],
                     peak_mem_bytes=int(mem.peak), cache_bytes=_tiers(model, cache, L + len(tokens) - 1),
                     decode_impl=impl, decode_setup_s=setup)


def _tiers(model, cache, length: int) -> dict[str, int]:
    """Bytes per tier as ``greedy_generate`` reports them: a LoLA cache's live pairs per tier; full attention's K/V
    of the ``length`` positions held (not the static cache's allocated slots)."""
    from transformers import StaticCache

    if isinstance(cache, LolaCache):
        return cache.nbytes_by_tier()
    if not isinstance(cache, StaticCache):
        return {"full_kv": dynamic_cache_bytes(cache)}
    layer = cache.layers[0]
    per_pos = sum(t[:, :, :1].numel() * t.element_size() for t in (layer.keys, layer.values))
    return {"full_kv": per_pos * length * len(cache.layers)}
