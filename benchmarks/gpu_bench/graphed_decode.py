"""Whole-model decode of full attention with a static KV cache, one decode step captured in a CUDA graph (issue #16
item 3, the full-attention side): what the model costs per token once the host is out of the way, next to the
memory-bandwidth floor, as gpt-fast reports it.

``static_decode`` prefills the prompt into a ``transformers.StaticCache``, then runs greedy decode steps whose inputs
(the token, its position) live in fixed device buffers that each step updates in place, so the same step can be
replayed: on CUDA it is captured once (after warm-up steps on a side stream) and replayed per token; elsewhere, or
when capture fails (the row then says why), it runs eagerly with the same buffers. The row records which ran.

Bytes a step must read: every parameter once (a tied embedding / head once; an untied input embedding one row) plus
the K/V cache up to the current position; achieved bandwidth = those bytes / time per token, against the device's
peak (from its memory clock and bus width where torch reports them, else the vendor figure in ``PEAK_GBS``, and the
row says which).

LoLA is not in this row yet: its decode state changes shape as the window grows and its kernels take the lengths
as host arguments, so a captured step could not be replayed (what remains of item 3).
"""

from __future__ import annotations

import time

import torch

PEAK_GBS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 PCIe": 2000.0, "A100-SXM4-80GB": 2039.0,
            "A100-SXM4-40GB": 1555.0, "L40S": 864.0, "RTX 4090": 1008.0}   # vendor data sheets, GB/s


def peak_bandwidth(device: str) -> tuple[float | None, str]:
    """(GB/s, where the figure comes from) of the device's memory; (None, reason) off CUDA."""
    if device != "cuda":
        return None, "not a CUDA device"
    props = torch.cuda.get_device_properties(0)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width (torch device properties)"
    for name, gbs in PEAK_GBS.items():
        if name.lower() in props.name.lower():
            return gbs, f"data sheet ({name})"
    return None, f"unknown for {props.name}"


def bytes_per_token(model, ctx: int) -> int:
    """Parameter bytes (shared tensors once; an untied input embedding counts one row, the one a step looks up) +
    the K/V cache bytes of ``ctx`` positions."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():           # untied: the head reads all of its matrix, the lookup one row
        total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    elt = next(model.parameters()).element_size()
    return total + 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * ctx * elt


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def static_decode(model, ids: torch.Tensor, n_tokens: int, device: str, graph: bool = True, n_warm: int = 3,
                  record: bool = False) -> tuple[dict, list[int]]:
    """Greedy decode of ``n_tokens`` after the prompt ``ids`` (1, L) with a static cache; returns (row, the tokens
    generated: the first and the warm-up ones, and with ``record`` every timed one too, for checks)."""
    from transformers import StaticCache

    from .common import forward_kw

    kw = forward_kw(model)                                           # past_key_values or cache, by version
    L = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=L + n_warm + n_tokens + 1)
    logits = model(ids, **{kw: cache}, cache_position=torch.arange(L, device=ids.device), use_cache=True,
                   logits_to_keep=1).logits
    tok = logits[:, -1].argmax(-1, keepdim=True)                     # (1, 1)
    pos = torch.tensor([L], device=ids.device)
    generated = [int(tok)]

    def step():
        out = model(tok, **{kw: cache}, cache_position=pos, position_ids=pos.view(1, 1), use_cache=True,
                    logits_to_keep=1).logits[:, -1]
        tok.copy_(out.argmax(-1, keepdim=True))
        pos.add_(1)

    how, error = "eager", None
    if graph and device == "cuda":
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(n_warm):
                step()
                generated.append(int(tok))
        torch.cuda.current_stream().wait_stream(side)
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()                      # recorded, not run: the replays below advance tok and pos
            run, how = g.replay, "CUDA graph"
        except Exception as e:              # e.g. a host sync inside the forward: say so, time it eagerly
            error, run = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", step
            torch.cuda.synchronize()
    else:
        for _ in range(n_warm):
            step()
            generated.append(int(tok))
        run = step
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n_tokens):
        run()
        if record:
            generated.append(int(tok))      # a host sync per token: for checks, not for timing
    _sync(device)
    dt = (time.perf_counter() - t0) / n_tokens
    ctx = L + n_warm + n_tokens // 2                                   # mean cache length while timed
    moved = bytes_per_token(model, ctx)
    peak, peak_src = peak_bandwidth(device)
    row = {"mode": "full", "impl": f"static cache, {how}", "decode_ms_per_token": 1000 * dt, "tokens": n_tokens,
           "bytes_per_token": moved, "achieved_gbs": moved / dt / 1e9, "peak_gbs": peak, "peak_source": peak_src,
           "of_peak": None if peak is None else moved / dt / 1e9 / peak, "capture_error": error}
    return row, generated
