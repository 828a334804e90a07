#!/usr/bin/env python
"""Are base / LoLA differences on short commonsense prompts numerical? Per-request log-likelihoods compared.

    python scripts/exactness_probe.py [--task piqa] [--limit 300] [--data-dir ../shared/data] [--out DIR]

Runs one lm-eval task (through ``run_commonsense``, log_samples on, batch 32, like the full-set runs) on the
embedded model with the shipped checkpoint for: full attention in bf16 (the reference of the full-set runs), full
attention in float32, base (η=64, λ=0) and LoLA (η=64, λ=512) in bf16, all with the checkpoint's sinks. For each
variant against full bf16 it reports the largest and mean |Δ log-likelihood| of the answer choices and the items
whose prediction changes, split into items whose requests all fit the variant's exact span (there the variant is
exact softmax attention by construction: any change is floating-point) and items with a longer request.
Writes probe.{csv,md} and config.json (provenance) to --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.evals.commonsense import request_lengths, run_commonsense  # noqa: E402
from lola_bench.models.checkpoint import read_meta, shipped_checkpoint  # noqa: E402
from lola_bench.models.loading import load_model  # noqa: E402
from lola_bench.models.variants import apply_attention  # noqa: E402
from lola_bench.provenance import provenance  # noqa: E402
from lola_bench.records import RunDir, frame_to_markdown  # noqa: E402
from lola_bench.settings import AttentionSettings  # noqa: E402


def loglikelihoods(model, tok, task: str, data_dir: str, limit: int) -> dict[int, list[float]]:
    """doc id -> log-likelihood of each answer choice, as lm-eval computed it."""
    _, raw = run_commonsense(model, tok, [task], data_dir=data_dir, limit=limit, batch_size=32, log_samples=True)
    (samples,) = raw["samples"].values()
    return {s["doc_id"]: [float(r[0]) for r in s["filtered_resps"]] for s in samples}


def compare(ref: dict, other: dict, long_docs: set) -> dict:
    rows = {"fit": [], "long": []}
    for doc, ll in ref.items():
        o = other[doc]
        delta = max(abs(a - b) for a, b in zip(ll, o))
        flip = max(range(len(ll)), key=ll.__getitem__) != max(range(len(o)), key=o.__getitem__)
        rows["long" if doc in long_docs else "fit"].append((delta, flip))
    out = {}
    for part, r in rows.items():
        out[f"items ({part})"] = len(r)
        out[f"max |Δll| ({part})"] = max((d for d, _ in r), default=float("nan"))
        out[f"mean |Δll| ({part})"] = sum(d for d, _ in r) / len(r) if r else float("nan")
        out[f"prediction changed ({part})"] = sum(f for _, f in r)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="piqa")
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--out", default=str(REPO / "results" / "diagnostics" / "commonsense-exactness"))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    ckpt = str(shipped_checkpoint("smollm2-135m"))
    sinks = int(read_meta(ckpt).get("sinks") or 0)
    combine = read_meta(ckpt).get("combine") or "gated"
    cfgs = {"base": LolaConfig(window=64, sparse=0, sinks=sinks, feature_map="hedgehog", combine=combine),
            "lola": LolaConfig(window=64, sparse=512, sinks=sinks, feature_map="hedgehog", combine=combine)}
    lengths = None
    results = {}
    for dtype, modes in [("bfloat16", ["full", "base", "lola"]), ("float32", ["full"])]:
        loaded = load_model("smollm2-135m", "cpu", dtype)
        if lengths is None:
            lengths = request_lengths(loaded.tokenizer, [args.task], data_dir=args.data_dir, limit=args.limit)
        for mode in modes:
            apply_attention(loaded.model, AttentionSettings(mode, cfgs.get(mode)), ckpt if mode != "full" else None)
            results[f"{mode} {dtype}"] = loglikelihoods(loaded.model, loaded.tokenizer, args.task, args.data_dir,
                                                        args.limit)
            print(f"[probe] {mode} {dtype}: {len(results[f'{mode} {dtype}'])} items", flush=True)
    ref = results["full bfloat16"]
    rows = []
    for name, res in results.items():
        if name == "full bfloat16":
            continue
        mode = name.split()[0]
        span = cfgs[mode].exact_len if mode in cfgs else None
        long_docs = set(lengths[lengths["length"] > span]["doc"]) if span else set()
        rows.append({"variant": name, "exact span": span, **compare(ref, res, long_docs)})
    table = pd.DataFrame(rows)
    with RunDir(args.out, overwrite=args.overwrite) as run:
        command = "python scripts/exactness_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
        run.write_json("config.json", {"command": command, "task": args.task, "limit": args.limit,
                                       "checkpoint": ckpt, "lola_configs": {k: v.to_dict() for k, v in cfgs.items()},
                                       "provenance": provenance("cpu")})
        run.write_table("probe", table, title=f"{args.task}, first {args.limit} items: each variant vs full "
                        "attention in bf16", notes=(
                            "Δll: log-likelihood of an answer choice minus full bf16's (largest over the item's "
                            "choices). (fit): items whose requests all fit the variant's exact span, where it is "
                            "exact softmax attention by construction; (long): items with a longer request. Full "
                            "float32 shows how much bf16 rounding alone moves the same numbers."))
    print(frame_to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
