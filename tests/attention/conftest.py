"""Fixtures of the attention-layer tests (tests/conftest.py applies too)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # benchmarks/ is imported from the repository root, not installed
    sys.path.insert(0, str(REPO))
