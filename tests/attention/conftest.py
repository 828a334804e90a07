"""Fixtures of the attention-layer tests (tests/conftest.py applies too)."""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils import _device

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is imported from the repository root, not installed
    sys.path.insert(0, str(REPO))

_EMPTY, _EMPTY_LIKE = torch.empty, torch.empty_like
# torch builds the set of factory functions that `with torch.device(...)` redirects once, on first use: build it now
# with the real ones, or a first use inside a test below caches the NaN-filling lambda and later meta-device model
# builds in this process land on the CPU (random models then drew different weights for every later test).
_device._device_constructors()


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point() or t.is_complex():
        t.fill_(float("nan"))
    elif t.dtype != torch.bool:
        t.fill_(torch.iinfo(t.dtype).max)  # an index nobody wrote is out of range
    return t


@pytest.fixture(autouse=True)
def nan_poisoned_empty(monkeypatch):
    """``torch.empty`` / ``torch.empty_like`` return NaN-filled tensors (integers: their max) in every test here, as
    flash-linear-attention's tests do: an output element that the code forgets to write shows up as NaN instead of
    whatever the allocator happened to leave there (often zeros, or a previous result that looks right)."""
    monkeypatch.setattr(torch, "empty", lambda *a, **kw: _poison(_EMPTY(*a, **kw)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **kw: _poison(_EMPTY_LIKE(*a, **kw)))
