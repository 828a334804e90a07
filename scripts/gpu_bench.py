#!/usr/bin/env python
"""One-call GPU benchmark of the LoLA Triton kernels: the entry point of ``benchmarks/gpu_bench`` (sections, outputs
and flags are documented there and in scripts/README.md).

    python3 scripts/gpu_bench.py --out $OUT --budget-s 450      # on a GPU machine
    python3 scripts/gpu_bench.py --compile-check                # no GPU: compile the kernels for sm_90
    TRITON_INTERPRET=1 python3 scripts/gpu_bench.py --smoke --out /tmp/bench   # tiny shapes on CPU
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gpu_bench.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
