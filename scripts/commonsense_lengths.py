#!/usr/bin/env python
"""How long the commonsense requests are, against LoLA's exact span: which ones ever reach the linear memory.

    python scripts/commonsense_lengths.py [--data-dir ../shared/data] [--out results/commonsense/request-lengths]

Builds every request of the five default tasks exactly as `lola-bench commonsense` does (same task YAMLs,
zero-shot), tokenizes it with the embedded SmolLM2 tokenizer, and writes lengths.md / lengths.csv (per task:
requests, median / p90 / max tokens fed, share longer than each variant's exact span) with config.json
(provenance). No model runs. A request no longer than a variant's exact span (``LolaConfig.exact_len``: nothing
folded yet) is scored with exact softmax attention, so that variant equals full attention on it by construction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.evals.commonsense import DEFAULT_TASKS, length_table, request_lengths  # noqa: E402
from lola_bench.models.gguf import embedded_tokenizer  # noqa: E402
from lola_bench.provenance import provenance  # noqa: E402
from lola_bench.records import RunDir, frame_to_markdown  # noqa: E402

VARIANTS = {"base η=64 λ=0 sinks=4": LolaConfig(window=64, sparse=0, sinks=4),
            "LoLA η=64 λ=512 sinks=4": LolaConfig(window=64, sparse=512, sinks=4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None, help="local data root (default $LOLA_BENCH_DATA; else the hub)")
    ap.add_argument("--out", default=str(REPO / "results" / "commonsense" / "request-lengths"))
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    spans = {label: cfg.exact_len for label, cfg in VARIANTS.items()}
    lengths = request_lengths(embedded_tokenizer(), tasks, data_dir=args.data_dir)
    table = length_table(lengths, spans)
    with RunDir(args.out, overwrite=args.overwrite) as run:
        command = "python scripts/commonsense_lengths.py " + " ".join(sys.argv[1:] if argv is None else argv)
        run.write_json("config.json", {"command": command, "tasks": tasks, "data_dir": args.data_dir,
                                       "tokenizer": "embedded SmolLM2", "exact_spans": spans,
                                       "provenance": provenance("cpu")})
        run.write_table("lengths", table, title="Commonsense requests: tokens fed to the model", notes=(
            "Length = tokens of context + continuation minus the last one (what lm-eval's HFLM feeds). "
            "`share > N (variant)`: requests longer than the variant's exact span N (LolaConfig.exact_len: the "
            "longest sequence with nothing folded into the linear state). Only those can score differently from "
            "full attention; the rest are exact softmax attention by construction."))
    print(frame_to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
