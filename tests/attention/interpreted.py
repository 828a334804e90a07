"""The set-up the Triton-interpreter test modules share (test_kernels.py, test_merge_steps.py).

Triton decides between compiling and interpreting when a function is decorated: for its own standard library
(tl.zeros, tl.sum, ...) when ``triton`` is first imported, for our kernels when their modules are. ``load`` sets
TRITON_INTERPRET=1 around those imports (reloading our kernel modules if an earlier import compiled them), then
restores the variable so the rest of the suite is unaffected; each test sets it again, and NaN-fills every kernel
output buffer, via the fixture ``interpret_fixture`` makes. If ``triton`` itself was already imported in compiled mode
by an earlier module of the same process, the in-process tests skip and the module's fresh-process test
(``run_in_fresh_process``) runs the whole file in a subprocess instead.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
# our kernel modules, in reload order: _jit first (the kernels bind its helpers when they are (re)imported)
MODULES = ("_jit", "merge", "merge_steps", "decode", "prefill")
KERNELS = {"merge": "_merge_kernel", "merge_steps": "_score_kernel", "decode": "_decode_kernel",
           "prefill": "_attn_kernel"}


def load() -> SimpleNamespace:
    """``interpreted`` (whether this process interprets Triton) and the kernel modules (``_host``, ``K`` the package,
    and every name of ``MODULES``), imported or reloaded in interpreter mode. Skips the module without triton."""
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        import triton.language.standard as tl_standard
        from triton.runtime.interpreter import InterpretedFunction

        interpreted = isinstance(tl_standard.zeros, InterpretedFunction)
        mods = {name: importlib.import_module(f"lola_bench.attention.kernels.{name}") for name in MODULES}
        compiled = any(not isinstance(getattr(mods[m], k), InterpretedFunction) for m, k in KERNELS.items())
        if interpreted and compiled:                     # compiled by an earlier import in this process
            mods = {name: importlib.reload(mods[name]) for name in MODULES}
        return SimpleNamespace(interpreted=interpreted, K=importlib.import_module("lola_bench.attention.kernels"),
                               _host=importlib.import_module("lola_bench.attention.kernels._host"), **mods)
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved


def interpret_fixture(interpreted: bool, fresh_test: str):
    """An autouse fixture: skip (except ``fresh_test``) when this process cannot interpret, else set
    TRITON_INTERPRET=1 and NaN-fill the kernels' output buffers for the test."""
    @pytest.fixture(autouse=True)
    def _interpret(monkeypatch, request):
        if not interpreted and request.node.name != fresh_test:
            pytest.skip(f"triton was imported in compiled mode earlier in this process; see {fresh_test}")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv("LOLA_TRITON_DEBUG_FILL", "1")
    return _interpret


def run_in_fresh_process(interpreted: bool, path: str) -> None:
    """Run the test file ``path`` in a subprocess with TRITON_INTERPRET=1 (skip when this process interprets)."""
    if interpreted:
        pytest.skip("kernels are interpreted in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path], env=env,
                       capture_output=True, text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
