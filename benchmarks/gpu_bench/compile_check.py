"""``--compile-check``: build every kernel variant the wrappers launch for sm_90 without a GPU, and report registers
and spills."""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from lola_bench.attention.state import LolaState
from lola_bench.attention.testing import qkv

from .common import bench_config, make_params, set_env, synthetic_state

COMPILE_CASES = [  # (dtype, head_dim, feature map, gqa, lambda); the first is the benchmark's configuration
    (torch.bfloat16, 64, "hedgehog-identity", "grouped", 512),
    (torch.bfloat16, 128, "hedgehog-identity", "grouped", 512),
    (torch.float16, 64, "elu", "grouped", 0), (torch.bfloat16, 128, "relu", "expanded", 16),
    (torch.float32, 64, "hedgehog", "expanded", 16), (torch.bfloat16, 64, "hedgehog", "grouped", 512)]


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kw)`` records the launch instead of running it."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.fn, args, kw))


def _signature(fn, args, kw) -> tuple[dict, dict, dict]:
    types = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
             torch.int64: "*i64", torch.uint8: "*u8"}
    vals = dict(zip(fn.arg_names, args))
    opts = {k: v for k, v in kw.items() if k in ("num_warps", "num_stages")}
    vals.update({k: v for k, v in kw.items() if k not in opts})
    sig, consts = {}, {}
    for param, name in zip(fn.params, fn.arg_names):
        v = vals[name]
        if param.is_constexpr:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = types[v.dtype]
        else:
            sig[name] = "fp32" if isinstance(v, float) else "i32"
    return sig, consts, opts


def _capture_case(dt, d: int, fm: str, gqa: str, lam: int) -> None:
    """Call every wrapper once (prefill, decode kernel, its static-state variant, chunk-boundary merge) with kernels
    replaced by recorders."""
    from lola_bench.attention.kernels import decode as kdec
    from lola_bench.attention.kernels import merge as kmerge
    from lola_bench.attention.kernels import prefill as kpre
    from lola_bench.attention.static_decode import StaticLolaState

    p = make_params(bench_config(window=64, sparse=lam, feature_map=fm, gqa=gqa, combine="lola"), 32, 8, d, "cpu")
    q, k, v = qkv(700, 32, 8, 1, d, dt)
    for step in (lambda: kpre.prefill(q, k, v, LolaState(), p),
                 lambda: kdec.decode_attention(q[:, :, :1], synthetic_state(p, 700, dt, "cpu"), p),
                 lambda: kdec.static_decode_attention(
                     q[:, :, :1], StaticLolaState.from_state(synthetic_state(p, 700, dt, "cpu"), p)),
                 lambda: kmerge.evict_before_triton(synthetic_state(p, 700, dt, "cpu"), p, 700 - 64)):
        try:
            step()
        except (RuntimeError, IndexError):  # nothing ran, so index buffers hold garbage afterwards
            pass


def compile_check(quick: bool) -> list[dict]:
    """Compile every kernel variant the wrappers launch for the cases above, for sm_90, without a GPU: launch
    arguments are captured from the real wrappers on CPU tensors, then triton.compile builds the cubin, whose
    register / stack use cuobjdump reports (stack > 0 means spills)."""
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lola_bench.attention.kernels import decode as kdec
    from lola_bench.attention.kernels import merge as kmerge
    from lola_bench.attention.kernels import merge_steps as ksteps
    from lola_bench.attention.kernels import prefill as kpre

    launches: list = []
    slots = [(kmerge, "_merge_kernel"), (kpre, "_attn_kernel"), (kdec, "_partial_kernel"), (kdec, "_decode_kernel"),
             (ksteps, "_score_kernel"), (ksteps, "_select_kernel"), (ksteps, "_fold_kernel")]
    saved = [getattr(m, name) for m, name in slots]
    for (m, name), f in zip(slots, saved):
        setattr(m, name, _Recorder(f, launches))
    try:
        for case in COMPILE_CASES[:1] if quick else COMPILE_CASES:
            _capture_case(*case)
        with set_env({"LOLA_MERGE_SELECT": "rank"}):  # the rank-counting selection (candidates beyond registers)
            _capture_case(*COMPILE_CASES[0])
        with set_env({"LOLA_MERGE": "stepwise-eager"}):  # the step-parallel merge (merge_steps.py)
            for case in COMPILE_CASES[:1] if quick else COMPILE_CASES:
                _capture_case(*case)
    finally:
        for (m, name), f in zip(slots, saved):
            setattr(m, name, f)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rows, seen = [], set()
    for fn, args, kw in launches:
        sig, consts, opts = _signature(fn, args, kw)
        key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in consts.items())))
        if key in seen:
            continue
        seen.add(key)
        dtype = next((v[1:] for n, v in sig.items() if n in ("KU", "Q") and v.startswith("*")), None)
        row = {"kernel": fn.__name__, "dtype": dtype, **{k: consts[k] for k in ("D", "GROUP", "PHI", "LEARNED",
               "READOUT", "HAS_LIN", "DEV_LEN", "DEV_LIN", "PREC", "SELECT", "NPAD", "SCORE_MODE") if k in consts}}
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn, sig, consts)
            cubin = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["cubin"]
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            if cuobjdump.is_file():
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(cubin)
                    f.flush()
                    usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True,
                                           text=True).stdout
                m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
                if m:
                    row["registers"], row["stack_bytes"] = int(m.group(1)), int(m.group(2))
            row["ok"] = True
        except Exception as e:  # noqa: BLE001 - report every failing variant
            msg = str(e)  # Triton puts the cause after the quoted source: keep both ends
            row["ok"], row["error"] = False, f"{type(e).__name__}: {msg[:300]} ... {msg[-700:]}"
        rows.append(row)
        print(f"[compile-check] {row}", flush=True)
    return rows
