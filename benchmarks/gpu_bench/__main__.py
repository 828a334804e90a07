"""``python -m benchmarks.gpu_bench`` (from the repository root) = ``python3 scripts/gpu_bench.py``."""

import sys

from .main import main

sys.exit(main())
