"""Whole-model decode with a static cache and one decode step captured in a CUDA graph, for full attention and LoLA
(issue #16 item 3): what the model costs per token once the host is out of the way, next to the memory-bandwidth
floor, as gpt-fast reports it.

``static_decode`` prefills the prompt into a ``transformers.StaticCache``, then runs greedy decode steps whose inputs
(the token, its position) live in fixed device buffers that each step updates in place, so the same step can be
replayed: on CUDA it is captured once (after warm-up steps on a side stream) and replayed per token; elsewhere, or
when capture fails (the row then says why), it runs eagerly with the same buffers. The row records which ran.

Bytes a step must read: every parameter once (a tied embedding / head once; an untied input embedding one row) plus
the K/V cache up to the current position; achieved bandwidth = those bytes / time per token, against the device's
peak (from its memory clock and bus width where torch reports them, else the vendor figure in ``PEAK_GBS``, and the
row says which).

``lola_static_decode`` does the same for a LoLA-patched model: the prompt prefilled by the normal path, every
layer's state converted to a static-capacity one (``lola_bench.attention.static_decode``: fixed buffers, position and
lengths in device tensors), one decode step of torch ops captured and replayed per token, the chunk-boundary merge
(every ``chunk`` tokens) run between replays: eagerly through a copy, or at steady boundaries in place, replayed as a
second CUDA graph (``merge``). Its bytes per token count the static LoLA cache (every slot the step reads) instead
of a K/V cache. With the kernels (``use_kernels``) each layer's attention in the replayed step is
the Triton decode over the static state (``kernels.static_step_triton``: a fixed grid, lengths read on the device),
else torch ops; the row's ``attention`` names what ran (``triton (static)``, ``torch (static)``, or a fallback).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from ..models.graph_capture import capture, first_line

PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "A100-SXM4-80GB": 2039.0,
            "A100-SXM4-40GB": 1555.0, "L40S": 864.0, "RTX 4090": 1008.0}   # vendor data sheets, GB/s


def peak_bandwidth(device: str) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) of the device's memory; (None, reason) off CUDA."""
    if not is_cuda(device):
        return None, "not a CUDA device"
    props = torch.cuda.get_device_properties(torch.device(device))
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width (torch device properties)"
    for name, gbs in PEAK_GBS.items():
        if name.lower() in props.name.lower():
            return gbs, f"data sheet ({name})"
    return None, f"unknown for {props.name}"


def param_bytes(model) -> int:
    """Parameter bytes a step reads: shared tensors once; an untied input embedding counts one row (the lookup)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():           # untied: the head reads all of its matrix, the lookup one row
        total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    return total


def forward_kw(model) -> str:
    """The cache keyword of ``model.forward``: ``cache`` (patched / newer transformers) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def bytes_per_token(model, ctx: int) -> int:
    """Parameter bytes (``param_bytes``) + the K/V cache bytes of ``ctx`` positions."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elt = next(model.parameters()).element_size()
    return param_bytes(model) + 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * ctx * elt


def is_cuda(device) -> bool:
    """cuda or cuda:N."""
    return str(device).startswith("cuda")


def _sync(device: str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize()


def timed_steps(step, tok: torch.Tensor, device: str, graph: bool, n_warm: int, n_tokens: int, record: bool,
                generated: list[int], before=None, after=None, eos: set[int] | None = None) -> dict:
    """Run ``n_warm`` greedy steps, then time ``n_tokens``: ``step`` (device work: updates ``tok`` and the position
    buffers in place) captured once as a CUDA graph and replayed when ``graph`` and on CUDA, else eagerly.
    ``before`` / ``after``: host work around every step, never captured (LoLA's chunk-boundary merge, its host
    mirrors); ``before`` returns True when it did device work (a merge): counted over the timed tokens.
    ``eos`` (generation; needs ``record``): stop after the step that yields one of these ids (warm-up included:
    nothing is captured or timed then), so ``n_tokens`` is the most timed.
    Returns {dt: seconds per timed token (None when none was timed), steps: tokens timed, how: "CUDA graph" or
    "eager", why: why eagerly, capture_error, merges: the merges while timed}."""
    if eos is not None and not record:
        raise ValueError("timed_steps: stopping at eos reads every token, so it needs record=True")
    before = before or (lambda: False)
    after = after or (lambda: None)
    timing, merges = [False], [0]

    def ended() -> bool:
        return eos is not None and generated[-1] in eos

    def pre():
        if before() and timing[0]:
            merges[0] += 1

    def eager():
        pre()
        step()
        after()

    how, why, error, run = "eager", None, None, eager
    if graph and is_cuda(device):
        with torch.cuda.device(torch.device(device)):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(n_warm):
                    if ended():
                        break
                    eager()
                    generated.append(int(tok))
            torch.cuda.current_stream().wait_stream(side)
            if ended():
                return _untimed("generation ended during warm-up")
            if n_tokens == 0:
                why = "nothing left to replay after the warm-up"
            else:
                try:
                    g = capture(step, side)
                    how = "CUDA graph"

                    def run():
                        pre()
                        g.replay()
                        after()
                except Exception as e:      # e.g. a host sync inside the forward: say so, time it eagerly
                    error = first_line(e)
                    why = f"capture failed: {error}"
                    torch.cuda.synchronize()
    else:
        why = "not a CUDA device" if not is_cuda(device) else "graph capture not asked for"
        for _ in range(n_warm):
            if ended():
                break
            eager()
            generated.append(int(tok))
    if ended():
        return _untimed("generation ended during warm-up")
    timing[0] = True
    _sync(device)
    t0 = time.perf_counter()
    steps = 0
    for _ in range(n_tokens):
        run()
        steps += 1
        if record:
            generated.append(int(tok))      # a host sync per token: for checks and generation, not for timing
            if ended():
                break
    _sync(device)
    return {"dt": (time.perf_counter() - t0) / steps if steps else None, "steps": steps, "how": how, "why": why,
            "capture_error": error, "merges": merges[0]}


def _untimed(why: str) -> dict:
    return {"dt": None, "steps": 0, "how": "eager", "why": why, "capture_error": None, "merges": 0}


def _bandwidth_row(moved: int, dt: float, device: str) -> dict:
    peak, peak_src = peak_bandwidth(device)
    return {"decode_ms_per_token": 1000 * dt, "bytes_per_token": moved, "achieved_gbs": moved / dt / 1e9,
            "peak_gbs": peak, "peak_source": peak_src, "of_peak": None if peak is None else moved / dt / 1e9 / peak}


@torch.no_grad()
def static_decode(model, ids: torch.Tensor, n_tokens: int, device: str, graph: bool = True, n_warm: int = 3,
                  record: bool = False) -> tuple[dict, list[int]]:
    """Greedy decode of ``n_tokens`` after the prompt ``ids`` (1, L) with a static cache; returns (row, the tokens
    generated: the first and the warm-up ones, and with ``record`` every timed one too, for checks)."""
    from transformers import StaticCache

    kw = forward_kw(model)                                           # past_key_values or cache, by version
    L = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=L + n_warm + n_tokens + 1)
    logits = model(ids, **{kw: cache}, cache_position=torch.arange(L, device=ids.device), use_cache=True,
                   logits_to_keep=1).logits
    tok = logits[:, -1].argmax(-1, keepdim=True)                     # (1, 1)
    pos = torch.tensor([L], device=ids.device)
    generated = [int(tok)]
    step = decode_step(model, cache, tok, pos, kw)
    t = timed_steps(step, tok, device, graph, n_warm, n_tokens, record, generated)
    ctx = L + n_warm + n_tokens // 2                                   # mean cache length while timed
    row = {"mode": "full", "impl": f"static cache, {t['how']}", "tokens": n_tokens,
           **_bandwidth_row(bytes_per_token(model, ctx), t["dt"], device), "capture_error": t["capture_error"],
           "eager_reason": t["why"]}
    return row, generated


def boundary_evict(state, use_kernels: bool):
    """(the chunk-boundary merge for a static LoLA state's ``prepare``, its name): the Triton merge when the kernels
    run here and cover the configuration (as the eager Triton decode does), else the torch ``evict_before``."""
    from ..attention.common import evict_before

    if use_kernels:
        from ..attention import kernels as K

        if not K.unsupported_reason(state.k, state.params):
            from ..attention.kernels._host import ensure_contiguous_state
            from ..attention.kernels.merge import evict_before_triton

            def evict(st, pr, ws):
                ensure_contiguous_state(st)
                evict_before_triton(st, pr, ws)

            return evict, "triton" + K.merge_name()
    return evict_before, "torch"


def decode_step(model, cache, tok: torch.Tensor, pos: torch.Tensor, kw: str):
    """The whole-model greedy decode step on a static cache (transformers' ``StaticCache`` or a
    ``StaticLolaCache``; what a CUDA graph replays): the token ``tok`` (1, 1) and its position ``pos`` (1,) are device
    buffers the step reads and advances; nothing it reads lives on the host (the position reaches the model as
    ``cache_position`` and ``position_ids``, never from the cache's host counters, which a replay does not advance).
    Returns the step; the step returns the logits."""
    def step():
        out = model(tok, **{kw: cache}, cache_position=pos, position_ids=pos.view(1, 1), use_cache=True,
                    logits_to_keep=1).logits[:, -1]
        tok.copy_(out.argmax(-1, keepdim=True))
        pos.add_(1)
        return out
    return step


def own_cache_step(model, cache, tok: torch.Tensor, kw: str):
    """The greedy decode step through the variant's own (dynamic) cache, eagerly: what runs where no static state
    exists; it advances ``tok`` in place like ``decode_step``."""
    def step():
        out = model(tok, **{kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]
        tok.copy_(out.argmax(-1, keepdim=True))
    return step


def static_lola(model, cache, max_len: int, use_kernels: bool | None = None, merge: str = "copy"):
    """(the ``StaticLolaCache`` copy of a prefilled LolaCache, its boundary merge, the merge's name, whether the
    kernels run the step): ``use_kernels`` None follows the layers' own ``kernels`` setting
    (``models.patch.kernel_choice``); ``merge``: how the steady merges run (``models.static_cache.StaticLolaCache``;
    the others always run the returned merge on a copy)."""
    from ..models.patch import kernel_choice, lola_modules
    from ..models.static_cache import to_static_cache

    scache = to_static_cache(model, cache, max_len=max_len, merge=merge)
    if use_kernels is None:
        st0 = scache.states[0]
        use_kernels = kernel_choice(st0.k, st0.params, lola_modules(model)[0].kernels) is None
    evict, merge_name = boundary_evict(scache.states[0], use_kernels)
    return scache, evict, merge_name, use_kernels


@contextmanager
def step_kernels(model, use_kernels: bool):
    """The LoLA layers' attention in the static step: Triton (static) or torch, as asked; restored after. The layers'
    call counts (``implementation_used``) keep what ran before."""
    from ..models.patch import lola_modules

    mods = lola_modules(model)
    saved = [m.kernels for m in mods]
    for m in mods:
        m.kernels = "triton" if use_kernels else "torch"
    try:
        yield
    finally:
        for m, k in zip(mods, saved):
            m.kernels = k


@torch.no_grad()
def lola_static_decode(model, ids: torch.Tensor, n_tokens: int, device: str, graph: bool = True, n_warm: int = 3,
                       record: bool = False, use_kernels: bool | None = None,
                       merge: str | None = None) -> tuple[dict, list[int]]:
    """Greedy decode of a LoLA-patched ``model``: the prompt prefilled by the normal path into a LolaCache, every
    layer's state converted to a ``StaticLolaState`` (``models.static_cache``), then the decode step (the static
    step of every layer, the token and position in device buffers) captured once and replayed per token on CUDA
    (eager elsewhere), with the chunk-boundary merge run eagerly before the steps that need it. ``use_kernels``: the
    step's attention and the merge in Triton where the kernels cover the configuration, else torch (the row's
    ``attention`` and ``merge`` say which ran); None: as the layers' own ``kernels`` setting chooses for their
    prefill and decode (``models.patch.kernel_choice``). A configuration without a static state decodes eagerly
    through the LolaCache and the row says why. Bytes per token: the parameters + every slot of the static cache (what
    the step reads, masked or not). ``merge``: how the steady chunk-boundary merges run ("copy", "in place" or
    "graph", ``StaticLolaCache``); None: "graph" where the step is captured, else "copy". With "graph" the warm-up
    runs through the first steady boundary (``static_merge.steps_to_steady``), so that the merge's capture is not
    timed. The row counts the merges by how they ran (``merges``). Returns (row, tokens) as ``static_decode``."""
    from ..attention.static_merge import steps_to_steady
    from ..models.patch import implementation_used, lola_modules, new_cache, reset_calls
    from ..models.static_cache import static_reason

    kw = forward_kw(model)
    L = ids.shape[1]
    cache = new_cache(model)
    tok = model(ids, **{kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    generated = [int(tok)]
    reason = static_reason(model)
    if reason:
        step = own_cache_step(model, cache, tok, kw)
        t = timed_steps(step, tok, device, False, n_warm, n_tokens, record, generated)
        cfg = lola_modules(model)[0].cfg       # the timed positions that started a chunk ran its merge in the loop
        first = L + n_warm
        merges = 0 if cfg.evict_at == "prompt_end" else sum(
            1 for p in range(first, first + n_tokens) if p % cfg.chunk_size == 0)
        row = {"mode": "lola", "impl": "LolaCache, eager", "eager_reason": f"no static state: {reason}",
               "tokens": n_tokens, "boundary_merges": merges,
               **_bandwidth_row(param_bytes(model) + sum(cache.nbytes_by_tier().values()), t["dt"], device)}
        return row, generated
    if merge is None:
        merge = "graph" if graph and is_cuda(device) else "copy"
    if merge == "graph":     # eager through the first steady boundary: its in-place merge warms up the capture
        m = lola_modules(model)[0]
        s0 = cache.state(m.layer_idx)
        first = steps_to_steady(m.params(), s0.pos, s0.pos - s0.win_k.shape[2], s0.sp_k.shape[2], n_warm + n_tokens)
        n_warm = n_warm if first is None else max(n_warm, first + 2)
    scache, evict, merge_name, use_kernels = static_lola(model, cache, L + n_warm + n_tokens + 1, use_kernels, merge)
    cache = None                                                    # its states were copied
    pos = torch.tensor([L], device=ids.device)
    step = decode_step(model, scache, tok, pos, kw)
    reset_calls(model)                              # the row's ``attention``: the decode step's alone
    with step_kernels(model, use_kernels):
        t = timed_steps(step, tok, device, graph, n_warm, n_tokens, record, generated,
                        before=lambda: scache.prepare(evict), after=scache.advance_host)
    cache_bytes = scache.nbytes()
    row = {"mode": "lola", "impl": f"static cache, {t['how']}", "eager_reason": t["why"],
           "capture_error": t["capture_error"], "attention": implementation_used(model),
           "tokens": n_tokens, "boundary_merges": t["merges"], "merge": merge_name, "cache_bytes": cache_bytes,
           "merges": ", ".join(f"{k} {v}" for k, v in sorted(scache.merge_counts().items())) or None,
           "merge_mode": scache.merge, "merge_capture_error": scache.merge_capture_error,
           **_bandwidth_row(param_bytes(model) + cache_bytes, t["dt"], device)}
    return row, generated
