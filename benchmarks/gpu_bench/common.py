"""What every section shares: the full and smoke configurations, shapes, parameters, synthetic states, the kernel
switches. Random inputs, parameters and state copies come from ``lola_bench.attention.testing``."""

from __future__ import annotations

import os
from unittest import mock

import torch

from lola_bench.attention import kernels as K
from lola_bench.attention import testing
from lola_bench.attention.common import LolaParams
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import LolaState
from lola_bench.models.loading import RANDOM_PRESETS

# The LoLA settings of the committed results/perf runs (the LolaConfig defaults before they became the authors'
# lola / expanded): every bench row uses them unless it names what it varies, so runs compare like for like.
BENCH_LOLA = {"combine": "gated", "gqa": "grouped"}


def bench_config(**kw) -> LolaConfig:
    """LolaConfig for a bench row: BENCH_LOLA, overridden by what the row varies."""
    return LolaConfig(**{**BENCH_LOLA, **kw})

FULL = dict(presets=["llama-3.2-1b", "llama-3.1-8b"], ttft_ctx=[4096, 8192, 16384, 32768], lambdas=[0, 512],
            window=64, decode_ctx=[4096, 32768, 131072], decode_preset="llama-3.2-1b", decode_layers=16,
            model_decode_ctx=[4096, 32768], model_decode_tokens=32, reps=3, corr_len=1000, corr_sparse=128,
            corr_decode_steps=80, dtype=torch.bfloat16,
            # tile settings of the merge kernel to time; by --compile-check (sm_90, bf16, d 64) the first three use
            # 174-249 registers without spills, the last two spill 120-272 bytes
            merge_tiles=["", "BLOCK_N=32", "BLOCK_N=32,BLOCK_DV=64,num_warps=4", "BLOCK_DV=64", "num_warps=4"],
            merge_step_reserve_s=300,  # merge_step rows start only while this much budget is left (for the model)
            # merge selection checks (lambda, LOLA_MERGE_SELECT, num_warps): register vectors of 128 to 2048
            # candidates, and 2064 (beyond SELECT_MAX_NPAD: rank counting)
            selection_cases=[(8, "threshold", 4), (8, "threshold", 8), (100, "threshold", 8), (512, "threshold", 4),
                             (512, "threshold", 8), (512, "rank", 8), (1900, "threshold", 8), (2000, "threshold", 8)])


SMOKE = dict(presets=["tiny"], ttft_ctx=[40], lambdas=[0, 8], window=8, decode_ctx=[64], decode_preset="tiny",
             decode_layers=2, model_decode_ctx=[40], model_decode_tokens=3, reps=1, corr_len=45, corr_sparse=8,
             corr_decode_steps=10, dtype=torch.float32, merge_tiles=["", "BLOCK_N=16,num_warps=4"],
             merge_step_reserve_s=0, selection_cases=[(8, "threshold", 4), (8, "rank", 8)])


def preset_shape(preset: str) -> dict:
    p = RANDOM_PRESETS[preset]
    return dict(hq=p["num_attention_heads"], hkv=p["num_key_value_heads"], d=p["head_dim"],
                layers=p["num_hidden_layers"])


def make_params(cfg: LolaConfig, hq: int, hkv: int, d: int, device: str) -> LolaParams:
    """Feature maps at their init (as a model without a checkpoint), window factors around ``cfg.factor_init``."""
    factors = torch.full((hq,), float(cfg.factor_init), device=device) + 0.5 * torch.randn(hq, device=device)
    return testing.make_params(cfg, hq, hkv, d, device=device, perturb=False, factors=factors)


def synthetic_state(p: LolaParams, ctx: int, dtype, device: str) -> LolaState:
    """The state of one layer after ``ctx`` tokens, sizes exactly as a prefill would leave them, random contents."""
    cfg = p.cfg
    ws = cfg.window_start((ctx - 1) // cfg.chunk_size)
    nw, ns = ctx - ws, min(cfg.sparse, ws)
    hs, hq, d, f = p.storage_heads, p.num_heads, p.head_dim, p.feature_dim
    st = LolaState()
    st.init(1, hs, hq, d, f, dtype, device, False)
    st.sp_k = torch.randn(1, hs, ns, d, device=device).to(dtype)
    st.sp_v = torch.randn(1, hs, ns, d, device=device).to(dtype)
    st.sp_pos = torch.randperm(max(ws, 1), device=device)[:ns].sort().values.view(1, 1, ns).expand(1, hs, ns).clone()
    st.win_k = torch.randn(1, hs, nw, d, device=device).to(dtype)
    st.win_v = torch.randn(1, hs, nw, d, device=device).to(dtype)
    st.win_pos = torch.arange(ws, ctx, device=device)
    st.H = torch.rand(1, hq, f, d, device=device) * 0.05
    st.s = torch.rand(1, hq, f, device=device) + 1.0
    st.pos, st.n_folded = ctx, ws - ns
    return st


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of sparse positions shared per (batch, head)."""
    if a.shape[-1] == 0 and b.shape[-1] == 0:
        return 1.0
    fr = []
    for x, y in zip(a.reshape(-1, a.shape[-1]).tolist(), b.reshape(-1, b.shape[-1]).tolist()):
        fr.append(len(set(x) & set(y)) / max(len(y), 1))
    return float(sum(fr) / len(fr))


def kernels_on(device: str) -> bool:
    return K.kernels_available() and (device == "cuda" or K.interpreting())


def set_env(env: dict):
    """Environment variables set for the duration of a with-block (kernel options are read at launch time)."""
    return mock.patch.dict(os.environ, env)


def timed_prefills(q, k, v, p: LolaParams, reps: int) -> tuple[torch.Tensor, list[dict]]:
    """One warm-up prefill (compiles), then ``reps`` timed ones: (warm-up output, per-run phase times in ms)."""
    from lola_bench.attention.kernels.prefill import marks_ms, prefill

    out = prefill(q, k, v, LolaState(), p)
    runs = []
    for _ in range(reps):
        marks = []
        prefill(q, k, v, LolaState(), p, marks=marks)
        runs.append(marks_ms(marks))
    return out, runs


def random_qkv(sh: dict, ctx: int, dt, device: str):
    """Random q (Hq heads), k, v (KV heads) of one layer's attention shape, batch 1."""
    return testing.qkv(ctx, sh["hq"], sh["hkv"], 1, sh["d"], dt, device)
