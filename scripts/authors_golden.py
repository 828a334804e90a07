#!/usr/bin/env python
"""Golden fixtures from the LoLA authors' own attention code, and lola-bench measured against them.

    # 1. extract the authors' code somewhere outside the repo (never commit it)
    git --git-dir=<mirror of lukemcdermotttt/LoLA> archive 679769f17a2b3e457105b5329e1ee187ba52b36a src \
        | tar -x -C /tmp/lola_up
    git --git-dir=<mirror of HazyResearch/lolcats> archive 375df84f58417a57b78c875fa3f8fa76e84ab12e src \
        | tar -x -C /tmp/lolcats_up
    # 2. their modules import einops and omegaconf (not lola-bench dependencies): put them on a side path
    python -m pip install --target /tmp/pydeps einops omegaconf
    # 3. regenerate the fixtures (tests/fixtures/authors/{authors_fixtures.pt,PROVENANCE.json})
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py --upstream /tmp/lola_up \
        --lolcats /tmp/lolcats_up --pydeps /tmp/pydeps --generate
    # 4. compare lola-bench with them (needs only the committed fixtures), and the README figures
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py --compare
    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py --upstream /tmp/lola_up \
        --lolcats /tmp/lolcats_up --pydeps /tmp/pydeps --measure

What runs. Their LoLA module ``src/model/linear_attention/linear_window_attention_sw_sparse.py`` (branch
``new_eval``) is imported unmodified, on CPU, in float64, through its public function ``lola_sparse_compatible``
(exactly what ``LolcatsSparseSlidingWindowAttention.forward`` calls after ``process_qkv`` (RoPE, ``repeat_kv``) and
the feature maps, with ``torch.sigmoid(window_factors)`` as the gate). For λ = 0 we also run LoLCATs' own
window + linear attention (``hybrid_attention_quadratic`` of ``linear_window_attention_sw.py`` (sliding window)
and of ``linear_window_attention_tk.py`` (terraced window, the form of the published 8B distill checkpoint)).
Feature maps are their ``FeatureMap('softmax_dim', mlp=FeatureMapMLP(H, d, F))``.

What is replaced (at import time, no file is edited):
  * ``flash_attn`` -> a stub module whose ``flash_attn_func`` is exact torch attention: scale 1/sqrt(d), causal
    mask aligned bottom-right (query i sees keys j <= i + Lk - Lq, as flash-attn >= 2.1), returns
    (out, softmax_lse, None) with the log-sum-exp in float64 for float64 inputs (float32 otherwise, like
    flash-attn), K/V heads repeated if fewer than query heads;
  * the packages ``src``, ``src.model``, ``src.model.linear_attention`` are registered as empty packages pointing
    at the extracted folders, so their ``__init__`` files (which import every experimental variant) do not run;
    the modules themselves and their relative / ``src.model.*`` imports are theirs;
  * instrumentation only: ``LoLAState.train_chunk`` is wrapped (the original runs unchanged) to record the
    sparse cache after each chunk boundary; positions are recovered by matching cached keys to the input keys.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib
import json
import math
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

FIXTURE_DIR = REPO / "tests" / "fixtures" / "authors"
FIXTURE_FILE = FIXTURE_DIR / "authors_fixtures.pt"
LOLA_FILE = "src/model/linear_attention/linear_window_attention_sw_sparse.py"
LOLCATS_SW_FILE = "src/model/linear_attention/linear_window_attention_sw.py"
LOLCATS_TK_FILE = "src/model/linear_attention/linear_window_attention_tk.py"
UPSTREAM = {
    "lola": {"repo": "lukemcdermotttt/LoLA", "branch": "new_eval",
             "commit": "679769f17a2b3e457105b5329e1ee187ba52b36a"},
    "lolcats": {"repo": "HazyResearch/lolcats", "branch": "main",
                "commit": "375df84f58417a57b78c875fa3f8fa76e84ab12e"},
}


# ---------------------------------------------------------------------------------------------------------------
# Loading the authors' modules
# ---------------------------------------------------------------------------------------------------------------
def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
                    alibi_slopes=None, deterministic=False, return_attn_probs=False, **_):
    """Exact torch stand-in for flash_attn.flash_attn_func. q (B, Lq, H, D), k/v (B, Lk, Hk, D)."""
    assert dropout_p == 0.0 and alibi_slopes is None and tuple(window_size) == (-1, -1)
    b, lq, h, d = q.shape
    lk, hk = k.shape[1], k.shape[2]
    if hk != h:
        k, v = k.repeat_interleave(h // hk, dim=2), v.repeat_interleave(h // hk, dim=2)
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(cd), k.to(cd)) * scale
    if causal:
        qi = torch.arange(lq, device=q.device).view(-1, 1)
        kj = torch.arange(lk, device=q.device).view(1, -1)
        s = s.masked_fill(kj > qi + (lk - lq), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)                                  # (B, H, Lq)
    p = torch.exp(s - lse.unsqueeze(-1))
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.to(cd)).to(q.dtype)
    return (out, lse, None) if return_attn_probs else out


def _register_packages(root: Path):
    for name, sub in (("src", "src"), ("src.model", "src/model"),
                      ("src.model.linear_attention", "src/model/linear_attention")):
        m = types.ModuleType(name)
        m.__path__ = [str(root / sub)]
        sys.modules[name] = m


def _drop_src_modules():
    for name in [n for n in sys.modules if n == "src" or n.startswith("src.")]:
        del sys.modules[name]


def load_upstream(upstream: Path, lolcats: Path | None, pydeps: str | None):
    """Import their modules; returns a namespace with .lola (module), .fmap (feature_map module),
    .lolcats_sw / .lolcats_tk (hybrid_attention_quadratic functions, or None)."""
    if pydeps:
        sys.path.insert(0, pydeps)
    stub = types.ModuleType("flash_attn")
    stub.flash_attn_func = flash_attn_func
    sys.modules["flash_attn"] = stub
    ns = types.SimpleNamespace()
    _drop_src_modules()
    _register_packages(upstream)
    ns.lola = importlib.import_module("src.model.linear_attention.linear_window_attention_sw_sparse")
    ns.fmap = importlib.import_module("src.model.feature_map")
    ns.lolcats_sw = ns.lolcats_tk = None
    if lolcats is not None:
        saved = {n: m for n, m in sys.modules.items() if n == "src" or n.startswith("src.")}
        _drop_src_modules()
        _register_packages(lolcats)
        ns.lolcats_sw = importlib.import_module(
            "src.model.linear_attention.linear_window_attention_sw").hybrid_attention_quadratic
        ns.lolcats_tk = importlib.import_module(
            "src.model.linear_attention.linear_window_attention_tk").hybrid_attention_quadratic
        _drop_src_modules()
        sys.modules.update(saved)
    ns.records = []
    ns.key_bank = None  # (B, H, T, d) expanded keys of the current run, for position recovery
    orig = ns.lola.LoLAState.train_chunk

    def train_chunk(self, k_c, v_c, fk_c, score_c):
        orig(self, k_c, v_c, fk_c, score_c)
        ns.records.append(_positions(self.K_top, ns.key_bank))

    ns.lola.LoLAState.train_chunk = train_chunk
    return ns


def _positions(K_top: torch.Tensor, bank: torch.Tensor | None) -> torch.Tensor:
    """K_top (B, G', H, d) -> positions (B, H, G') ascending; -1 for a zero-padded key (their prefill padding)."""
    b, n, h, d = K_top.shape if K_top.numel() else (bank.shape[0], 0, bank.shape[1], bank.shape[3])
    if n == 0:
        return torch.zeros(b, h, 0, dtype=torch.long)
    kt = K_top.permute(0, 2, 1, 3)                                    # (B, H, G', d)
    eq = (kt.unsqueeze(3) == bank.to(kt.dtype).unsqueeze(2)).all(-1)  # (B, H, G', T)
    pos = torch.where(eq.any(-1), eq.float().argmax(-1), torch.full_like(eq[..., 0], -1, dtype=torch.long))
    pad = (kt == 0).all(-1)
    assert bool(((pos >= 0) | pad).all()), "a cached key matches no input key"
    assert bool((eq.sum(-1) <= 1).all()), "ambiguous key match"
    return pos.sort(dim=-1).values


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Running their code
# ---------------------------------------------------------------------------------------------------------------
def repeat_kv(x: torch.Tensor, hq: int) -> torch.Tensor:
    return x.repeat_interleave(hq // x.shape[1], dim=1)  # == their utils.repeat_kv


def their_feature_maps(ns, w_q: torch.Tensor, w_k: torch.Tensor):
    """Their FeatureMap('softmax_dim', fullspace) around FeatureMapMLP with the given (H, d, F) weights."""
    maps = []
    for w in (w_q, w_k):
        h, d, f = w.shape
        mlp = ns.fmap.FeatureMapMLP(num_heads=h, head_dim=d, feature_dim=f, dtype=w.dtype, device="cpu")
        with torch.no_grad():
            mlp.layer.copy_(w)
        maps.append(ns.fmap.init_feature_map("softmax_dim", mlp=mlp, eps=1e-12, fullspace=True))
    return maps


def new_cache(ns):
    """Their LinearAttentionSparseSlidingWindowCache. Their code targets transformers 4.45, whose Cache() takes no
    arguments; newer transformers' Cache.__init__ requires some, so there the object is created without running
    transformers' Cache.__init__ and with exactly the attributes their two __init__ bodies set (the LoLA path uses
    only ``_states``)."""
    cls = ns.lola.LinearAttentionSparseSlidingWindowCache
    try:
        return cls()
    except (TypeError, ValueError):
        c = object.__new__(cls)
        c._seen_tokens, c._seen_tokens_by_layer, c.kv_states, c.k_states = 0, [], [], []
        c._states = {}
        return c


@torch.no_grad()
def run_lola(ns, fx: dict, dtype=torch.float64, prefill_len: int | None = None, n_total: int | None = None):
    """Their LoLA on fixture inputs: one prefill call of ``prefill_len`` tokens, then one decode call per token
    up to ``n_total``. Returns (out (B, Hq, n_total, d) float64, sparse positions per chunk)."""
    C, G = fx["eta"], fx["lam"]
    hq = fx["q"].shape[1]
    q = fx["q"].to(dtype)
    k, v = repeat_kv(fx["k"], hq).to(dtype), repeat_kv(fx["v"], hq).to(dtype)
    L = fx["prefill_len"] if prefill_len is None else prefill_len
    T = q.shape[2] if n_total is None else n_total
    fmq, fmk = their_feature_maps(ns, fx["fmap_q"].to(dtype), fx["fmap_k"].to(dtype))
    fq, fk = fmq(q), fmk(k)
    gate = torch.sigmoid(fx["window_factors"].to(dtype))          # as LolcatsSparseSlidingWindowAttention.forward
    ns.records, ns.key_bank = [], k
    cache = new_cache(ns)
    kw = dict(layer_idx=0, window_size=C, global_cache_size=G, kv_state=cache)
    outs = []
    y, _, cache = ns.lola.lola_sparse_compatible(q[:, :, :L], k[:, :, :L], fq[:, :, :L], fk[:, :, :L],
                                                 v[:, :, :L], gate, **kw)
    outs.append(y.transpose(1, 2))
    for t in range(L, T):
        s = slice(t, t + 1)
        y, _, cache = ns.lola.lola_sparse_compatible(q[:, :, s], k[:, :, s], fq[:, :, s], fk[:, :, s],
                                                     v[:, :, s], gate, **kw)
        outs.append(y.transpose(1, 2))
    out = torch.cat(outs, dim=2).to(torch.float64)
    # queries of chunk j attend to the sparse cache left by the (j-1)-th chunk update
    b = q.shape[0]
    n_chunks = math.ceil(T / C)
    empty = torch.zeros(b, hq, 0, dtype=torch.long)
    per_chunk = [empty] + [ns.records[j - 1] if j - 1 < len(ns.records) else None for j in range(1, n_chunks)]
    return out, per_chunk


@torch.no_grad()
def run_lolcats(ns, fn, fx: dict):
    """LoLCATs' hybrid_attention_quadratic (prefill) with their defaults: affine_attention_factors false."""
    hq = fx["q"].shape[1]
    q, k, v = fx["q"], repeat_kv(fx["k"], hq), repeat_kv(fx["v"], hq)
    fmq, fmk = their_feature_maps(ns, fx["fmap_q"], fx["fmap_k"])
    # they compute in float32 (.float() on q, k, f_q, f_k, v); the factor goes in as float32 too, as their bf16
    # parameter promotes to float32 there (a float64 factor breaks their einsum on mixed dtypes)
    gate = torch.sigmoid(fx["window_factors"]).float()
    y, _ = fn(q, k, fmq(q), fmk(k), v, gate, 1, window_size=fx["eta"])
    return y.to(torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------------------
CONFIGS = [
    # name, module, eta, lam, B, Hq, Hkv, d, F, prefill_len, total_len
    ("lam_lt_eta", "lola", 8, 4, 1, 2, 2, 16, 8, 64, 64),
    ("lam_not_multiple", "lola", 8, 20, 2, 2, 2, 16, 8, 80, 80),
    ("gqa", "lola", 8, 12, 1, 4, 2, 16, 8, 64, 64),
    ("lam0_lola", "lola", 8, 0, 1, 2, 1, 16, 16, 48, 64),
    ("prefill_decode", "lola", 8, 8, 1, 4, 2, 16, 8, 32, 60),
    ("feature_dim_12", "lola", 8, 8, 1, 2, 2, 16, 12, 56, 66),
    ("lolcats_sw", "lolcats_sw", 8, 0, 1, 2, 2, 16, 8, 48, 48),
    ("lolcats_tk", "lolcats_tk", 8, 0, 1, 2, 1, 16, 16, 48, 48),
]


def make_inputs(seed: int, B, Hq, Hkv, d, F, T) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    bound = math.sqrt(6.0 / (d * F)) * math.sqrt(F)  # their kaiming_uniform_ bound for an (H, d, F) tensor
    u = lambda *s: (torch.rand(*s, generator=g, dtype=torch.float64) * 2 - 1) * bound  # noqa: E731
    return {
        "q": r(B, Hq, T, d) * 1.5, "k": r(B, Hkv, T, d), "v": r(B, Hkv, T, d),
        "fmap_q": u(Hq, d, F), "fmap_k": u(Hq, d, F),
        "window_factors": (torch.rand(1, Hq, 1, 1, generator=g, dtype=torch.float64) * 4 - 3),
    }


def generate(ns, out_dir: Path, upstream: Path, lolcats: Path | None, argv: list[str]):
    fixtures = {}
    for i, (name, module, eta, lam, B, Hq, Hkv, d, F, L, T) in enumerate(CONFIGS):
        fx = make_inputs(1000 + i, B, Hq, Hkv, d, F, T)
        fx.update(name=name, module=module, eta=eta, lam=lam, prefill_len=L, eps=1e-6)
        if module == "lola":
            out, per_chunk = run_lola(ns, fx, prefill_len=L, n_total=T)
            fx["out"] = out
            fx["sparse_pos"] = per_chunk
        else:
            if lolcats is None:
                continue
            fx["out"] = run_lolcats(ns, ns.lolcats_sw if module == "lolcats_sw" else ns.lolcats_tk, fx)
            fx["sparse_pos"] = []
        fixtures[name] = fx
        print(f"{name:18s} module={module:10s} eta={eta} lam={lam} B={B} Hq={Hq} Hkv={Hkv} d={d} F={F} "
              f"prefill={L} total={T}  |out|max={fx['out'].abs().max():.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"configs": fixtures}, out_dir / FIXTURE_FILE.name)
    files = {"lola": {LOLA_FILE: _file_sha(upstream / LOLA_FILE),
                      "src/model/linear_attention/linear_attention.py":
                          _file_sha(upstream / "src/model/linear_attention/linear_attention.py"),
                      "src/model/feature_map.py": _file_sha(upstream / "src/model/feature_map.py")}}
    if lolcats is not None:
        files["lolcats"] = {LOLCATS_SW_FILE: _file_sha(lolcats / LOLCATS_SW_FILE),
                            LOLCATS_TK_FILE: _file_sha(lolcats / LOLCATS_TK_FILE)}
    prov = {
        "upstream": {k: {**UPSTREAM[k], "files_sha256": files.get(k, {})} for k in UPSTREAM},
        "replaced": [
            "flash_attn (not installed): stub module injected into sys.modules; flash_attn_func = exact torch "
            "attention, scale 1/sqrt(d), causal mask aligned bottom-right, returns (out, softmax_lse, None), lse in "
            "float64 for float64 inputs",
            "packages src, src.model, src.model.linear_attention registered as empty packages (their __init__ "
            "files, which import every experimental variant, are not executed); module files unmodified",
            "instrumentation only: LoLAState.train_chunk wrapped to record K_top after each chunk update; "
            "positions recovered by exact key matching",
            "with transformers >= 5 (whose Cache.__init__ needs arguments; their code targets 4.45) their "
            "LinearAttentionSparseSlidingWindowCache is created with object.__new__ and the attributes their "
            "__init__ bodies set (_states = {} is the only one the LoLA path uses)",
            "einops and omegaconf (imported by their modules) installed on a side path (pip --target)",
        ],
        "entry_points": {
            "lola": "lola_sparse_compatible(q, k, fq, fk, v, torch.sigmoid(window_factors), layer_idx=0, "
                    "window_size=eta, global_cache_size=lam, kv_state=LinearAttentionSparseSlidingWindowCache())"
                    "; one call for the prefill, then one call per decode token",
            "lolcats_sw": "linear_window_attention_sw.hybrid_attention_quadratic(q, k, fq, fk, v, "
                          "sigmoid(window_factors).float(), 1, window_size=eta)  (affine_attention_factors false; "
                          "they compute in float32 internally via .float(), so these outputs carry float32 "
                          "rounding; the factor is passed as float32 because a float64 one breaks their einsum)",
            "lolcats_tk": "linear_window_attention_tk.hybrid_attention_quadratic(same arguments)",
            "feature_maps": "FeatureMap('softmax_dim', mlp=FeatureMapMLP(H, d, F), eps=1e-12, fullspace=True)",
        },
        "layout": {
            "q": "(B, Hq, T, d) after RoPE", "k, v": "(B, Hkv, T, d) after RoPE, before repeat_kv",
            "fmap_q, fmap_k": "(Hq, d, F) FeatureMapMLP.layer; phi dim = 2F",
            "window_factors": "(1, Hq, 1, 1) raw logits (gate = sigmoid)",
            "out": "(B, Hq, T, d) float64: prefill outputs then decode outputs",
            "sparse_pos": "list over chunks j of (B, Hq, n_j): positions in the sparse cache that the queries of "
                          "chunk j attend to (ascending; -1 = a zero-padded key)",
            "eta, lam, prefill_len, eps": "window = chunk, sparse cache size, prompt length, their EPS",
        },
        "torch": torch.__version__,
        "date": _dt.date.today().isoformat(),
        "regenerate": "OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py " + " ".join(argv),
    }
    (out_dir / "PROVENANCE.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"wrote {out_dir / FIXTURE_FILE.name} ({(out_dir / FIXTURE_FILE.name).stat().st_size} bytes)")


# ---------------------------------------------------------------------------------------------------------------
# lola-bench on the fixtures
# ---------------------------------------------------------------------------------------------------------------
def load_fixtures(path: Path = FIXTURE_FILE) -> dict:
    return torch.load(path, weights_only=True)["configs"]


def lola_bench_settings(fx: dict) -> dict:
    """The lola-bench settings that reproduce each authors' module: ``--preset paper`` (combine='lola', expanded
    GQA, chunk = window, no sinks) for LoLA, combine='lolcats' for LoLCATs' window + linear attention."""
    if fx["module"] == "lola":
        from lola_bench.settings import PRESETS

        paper = {k: PRESETS["paper"][k] for k in ("combine", "gqa", "sinks")}
        return dict(window=fx["eta"], sparse=fx["lam"], chunk=fx["eta"], negate=False, **paper)
    if fx["module"] == "lolcats_tk":
        return dict(window=fx["eta"], sparse=0, chunk=fx["eta"], combine="lolcats", gqa="expanded", sinks=0,
                    negate=False)
    # LoLCATs' sliding window of `window_size` keys (itself included) = chunk 1, window eta-1
    return dict(window=fx["eta"] - 1, sparse=0, chunk=1, combine="lolcats", gqa="expanded", sinks=0, negate=False)


def lola_bench_params(fx: dict, dtype=torch.float64, **override):
    from torch import nn

    from lola_bench.attention.common import LolaParams
    from lola_bench.attention.config import LolaConfig
    from lola_bench.attention.feature_maps import Hedgehog
    from lola_bench.attention.scorers import make_scorer

    class RectHedgehog(Hedgehog):
        """Hedgehog with (H, d, F) weights, F != d allowed. TODO(issue 15): the library's own loader."""

        def __init__(self, w):
            super().__init__(w.shape[0], w.shape[1], learnable=False)
            self.layer = nn.Parameter(w.clone(), requires_grad=False)

        @property
        def feature_dim(self) -> int:
            return 2 * self.layer.shape[-1]

    st = {**lola_bench_settings(fx), **override}
    negate = st.pop("negate")
    cfg = LolaConfig(feature_map="hedgehog", scorer="sre", eps=fx["eps"], **st)
    f = fx["window_factors"].reshape(-1)
    hq, hkv, d = fx["q"].shape[1], fx["k"].shape[1], fx["q"].shape[3]
    return LolaParams(cfg, RectHedgehog(fx["fmap_q"].to(dtype)), RectHedgehog(fx["fmap_k"].to(dtype)),
                      (-f if negate else f).to(dtype), make_scorer("sre"), hq, hkv, d)


@torch.no_grad()
def run_lola_bench(fx: dict, dtype=torch.float64, prefill_len: int | None = None, **override):
    """lola-bench's fast path: chunked prefill one chunk at a time, then one decode call per token.
    Returns (out (B, Hq, T, d) float64, sparse positions seen by each chunk's queries)."""
    from lola_bench.attention.chunked import lola_chunked
    from lola_bench.attention.decode import lola_decode
    from lola_bench.attention.state import LolaState

    params = lola_bench_params(fx, dtype, **override)
    C = params.cfg.chunk_size
    q, k, v = fx["q"].to(dtype), fx["k"].to(dtype), fx["v"].to(dtype)
    T = q.shape[2]
    L = fx["prefill_len"] if prefill_len is None else prefill_len
    state = LolaState()
    outs, per_chunk = [], {}
    t = 0
    while t < L:  # prefill, cut at chunk boundaries so that the sparse cache of every chunk can be read
        e = min(L, (t // C + 1) * C)
        outs.append(lola_chunked(q[:, :, t:e], k[:, :, t:e], v[:, :, t:e], state, params))
        per_chunk[t // C] = state.sp_pos.clone()
        t = e
    for t in range(L, T):
        outs.append(lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state, params))
        per_chunk[t // C] = state.sp_pos.clone()
    return torch.cat(outs, dim=2).to(torch.float64), [per_chunk[j] for j in sorted(per_chunk)]


@torch.no_grad()
def run_lola_bench_reference(fx: dict):
    from lola_bench.attention.reference import lola_reference

    params = lola_bench_params(fx)
    return lola_reference(fx["q"], fx["k"], fx["v"], params)


def row_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over (batch, head, position) of ||a - b|| / ||b|| (output vectors)."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-300)).max())


def compare_one(fx: dict) -> dict:
    out, per_chunk = run_lola_bench(fx)
    res = {"name": fx["name"], "module": fx["module"], "rel_err": row_rel_err(out, fx["out"]),
           "abs_err": float((out - fx["out"]).abs().max())}
    if fx["module"] == "lola":
        ref = fx["sparse_pos"]
        res["sparse_identical"] = len(ref) == len(per_chunk) and all(
            a.shape == b.shape and bool((a == b).all()) for a, b in zip(ref, per_chunk))
        res["chunks"] = len(ref)
        res["max_sparse"] = max(int(p.shape[-1]) for p in ref)
    if fx["module"] == "lola" and fx["k"].shape[1] < fx["q"].shape[1]:   # what lola-bench's grouped GQA changes
        grouped, _ = run_lola_bench(fx, gqa="grouped")
        err = (grouped - fx["out"]).norm(dim=-1) / fx["out"].norm(dim=-1)
        res["grouped_gqa_rel_err_max"], res["grouped_gqa_rel_err_mean"] = float(err.max()), float(err.mean())
    L = fx["prefill_len"]  # the quadratic reference on the prompt
    r = run_lola_bench_reference({**fx, "q": fx["q"][:, :, :L], "k": fx["k"][:, :, :L], "v": fx["v"][:, :, :L]})
    res["reference_rel_err"] = row_rel_err(r.out.to(torch.float64), fx["out"][:, :, :L])
    return res


# ---------------------------------------------------------------------------------------------------------------
# README figures (deliverable 5)
# ---------------------------------------------------------------------------------------------------------------
def _overlap(a: list, b: list) -> float:
    """Mean over chunks and heads of |A ∩ B| / max(|A|, 1) of two per-chunk position lists."""
    fr = []
    for x, y in zip(a, b):
        if x is None or y is None or x.shape[-1] == 0:
            continue
        for bi in range(x.shape[0]):
            for h in range(x.shape[1]):
                sx, sy = set(x[bi, h].tolist()), set(y[bi, h].tolist())
                fr.append(len(sx & sy) / max(len(sx), 1))
    return sum(fr) / len(fr) if fr else 1.0


def measure(ns) -> dict:
    res = {}
    # (a) decode after a prompt whose length is not a multiple of eta vs their one-shot prefill
    rows = []
    for (eta, lam, L, T) in [(8, 8, 33, 80), (8, 8, 36, 80), (8, 8, 39, 80), (8, 24, 36, 96), (16, 32, 72, 192)]:
        fx = make_inputs(7, 1, 4, 2, 16, 8, T)
        fx.update(eta=eta, lam=lam, prefill_len=T, eps=1e-6, module="lola", name="a")
        one, pc1 = run_lola(ns, fx, prefill_len=T, n_total=T)
        dec, pc2 = run_lola(ns, fx, prefill_len=L, n_total=T)
        lb, _ = run_lola_bench(fx, prefill_len=L)  # lola-bench: the same prompt, then decode
        rows.append({"eta": eta, "lam": lam, "prompt": L, "total": T,
                     "decode_vs_oneshot_rel_err_max": row_rel_err(dec[:, :, L:], one[:, :, L:]),
                     "decode_vs_oneshot_rel_err_mean": float(((dec[:, :, L:] - one[:, :, L:]).norm(dim=-1)
                                                              / one[:, :, L:].norm(dim=-1)).mean()),
                     "padded_keys_in_sparse_cache": int(sum(int((p < 0).sum()) for p in pc2 if p is not None)),
                     "lola_bench_prompt_then_decode_vs_their_oneshot_rel_err": row_rel_err(lb, one)})
    res["a_decode_after_unaligned_prompt"] = rows
    # (b) their bf16 state vs their float64 math; and lola-bench bf16 inputs (fp32 state) vs its float64
    rows = []
    for (eta, lam, L, d, F) in [(16, 32, 512, 64, 32), (64, 64, 1024, 64, 32)]:
        fx = make_inputs(11, 1, 4, 2, d, F, L)
        fx.update(eta=eta, lam=lam, prefill_len=L, eps=1e-6, module="lola", name="b")
        o64, p64 = run_lola(ns, fx)
        o16, p16 = run_lola(ns, fx, dtype=torch.bfloat16)
        l64, q64 = run_lola_bench(fx)
        l16, q16 = run_lola_bench(fx, dtype=torch.bfloat16)
        rows.append({"eta": eta, "lam": lam, "L": L, "d": d, "F": F,
                     "theirs_bf16_vs_f64_sparse_overlap": _overlap(p64, p16),
                     "theirs_bf16_vs_f64_rel_err_max": row_rel_err(o16, o64),
                     "theirs_bf16_vs_f64_rel_err_mean": float(((o16 - o64).norm(dim=-1) / o64.norm(dim=-1)).mean()),
                     "lola_bench_bf16_in_fp32_state_vs_f64_sparse_overlap": _overlap(q64, q16),
                     "lola_bench_bf16_vs_f64_rel_err_max": row_rel_err(l16, l64),
                     "lola_bench_bf16_vs_f64_rel_err_mean": float(((l16 - l64).norm(dim=-1)
                                                                   / l64.norm(dim=-1)).mean()),
                     "lola_bench_f64_vs_theirs_f64_rel_err": row_rel_err(l64, o64)})
    res["b_bf16_state"] = rows
    # (c) what remains between theirs and lola-bench's combine='lola' (eps in the same place): before anything is
    # folded lola-bench is exact softmax, theirs already mixes in an empty linear state, g*num/(g*Z + eps)
    rows = []
    for fshift, qscale in [(0.0, 1.0), (-6.0, 1.0), (-10.0, 1.0), (0.0, 0.1), (-10.0, 0.1)]:
        fx = make_inputs(13, 1, 2, 2, 16, 8, 96)
        fx["window_factors"] = fx["window_factors"] + fshift
        fx["q"] = fx["q"] * qscale
        fx.update(eta=8, lam=8, prefill_len=96, eps=1e-6, module="lola", name="c")
        o, p = run_lola(ns, fx)
        lb, q = run_lola_bench(fx)
        rows.append({"factor_shift": fshift, "q_scale": qscale,
                     "factors": [round(float(x), 3) for x in fx["window_factors"].reshape(-1)],
                     "rel_err_max": row_rel_err(lb, o),
                     "sparse_identical": all(bool((a == b).all()) for a, b in zip(p, q) if a is not None)})
    res["c_eps_placement"] = rows
    # (d) overflow of the unshifted sum exp(lse) in their bf16 / fp32 path
    rows = []
    for scale in (1.0, 20.0, 40.0, 60.0):
        fx = make_inputs(17, 1, 2, 2, 16, 8, 64)
        fx["q"] = fx["q"] * scale
        fx.update(eta=8, lam=8, prefill_len=64, eps=1e-6, module="lola", name="d")
        o16, _ = run_lola(ns, fx, dtype=torch.bfloat16)
        logit_max = float((fx["q"] @ repeat_kv(fx["k"], 2).transpose(-1, -2) / 4.0).max())
        rows.append({"q_scale": scale, "max_logit": round(logit_max, 1),
                     "bf16_nonfinite_outputs": int((~torch.isfinite(o16)).any(-1).sum()),
                     "rows": int(o16.shape[0] * o16.shape[1] * o16.shape[2])})
    res["d_overflow_bf16"] = rows
    return res


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", type=Path, help="extracted lukemcdermotttt/LoLA (new_eval) checkout")
    ap.add_argument("--lolcats", type=Path, help="extracted HazyResearch/lolcats checkout (λ = 0 fixtures)")
    ap.add_argument("--pydeps", help="extra sys.path entry holding einops and omegaconf")
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR)
    ap.add_argument("--generate", action="store_true", help="write the fixtures and PROVENANCE.json")
    ap.add_argument("--compare", action="store_true", help="lola-bench vs the committed fixtures")
    ap.add_argument("--measure", action="store_true", help="the README 'differences' figures (needs --upstream)")
    ap.add_argument("--measure-out", type=Path, help="also write the --measure figures to this JSON file")
    ap.add_argument("--compare-out", type=Path, help="also write the --compare rows to this JSON file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.generate or a.measure:
        if a.upstream is None:
            ap.error("--generate and --measure need --upstream")
        ns = load_upstream(a.upstream.resolve(), a.lolcats.resolve() if a.lolcats else None, a.pydeps)
        if a.generate:
            generate(ns, a.out, a.upstream.resolve(), a.lolcats.resolve() if a.lolcats else None, argv)
        if a.measure:
            m = {"torch": torch.__version__, "date": _dt.date.today().isoformat(),
                 "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py " + " ".join(argv),
                 **measure(ns)}
            print(json.dumps(m, indent=1))
            if a.measure_out:
                a.measure_out.write_text(json.dumps(m, indent=1) + "\n")
    if a.compare:
        rows = [compare_one(fx) for fx in load_fixtures(a.out / FIXTURE_FILE.name).values()]
        for row in rows:
            print(json.dumps(row))
        if a.compare_out:
            a.compare_out.write_text(json.dumps({
                "torch": torch.__version__, "date": _dt.date.today().isoformat(),
                "command": "OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/authors_golden.py " + " ".join(argv),
                "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
