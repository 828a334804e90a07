"""Needle depth x context heatmaps of a RULER sweep (issue #20), from its cells' predictions.jsonl: one PNG per
(variant, task) under <sweep>/heatmaps/, written by ``lola_bench.report.depth_heatmaps`` (mean score and n per cell).

    python scripts/sweep_heatmaps.py results/sweep/ruler-suite-embedded

Variants are named by attention mode, with "-training-free" for LoLA rows without a learned feature map
(hedgehog-identity), so the two LoLA families get separate maps. Tasks without a needle depth get none.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lola_bench.report import depth_heatmaps  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (Path(argv[0]) / "cells").is_dir():
        print("usage: python scripts/sweep_heatmaps.py SWEEP_DIR (a sweep directory with cells/)", file=sys.stderr)
        return 2
    sweep = Path(argv[0])
    preds = []
    for done in sorted((sweep / "cells").glob("*/done.json")):
        for line in (done.parent / "predictions.jsonl").read_text().splitlines():
            p = json.loads(line)
            if p.get("attn") == "lola" and p.get("feature_map") == "hedgehog-identity":
                p["attn"] = "lola-training-free"
            preds.append(p)
    out = sweep / "heatmaps"
    out.mkdir(exist_ok=True)
    written = depth_heatmaps(preds, out)
    print(f"{len(written)} heatmaps in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
