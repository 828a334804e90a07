#!/usr/bin/env python
"""Side-by-side table of two gpu_bench.py runs (same device kind), with the ratio new / old.

    python scripts/perf_compare.py OLD.json NEW.json --label-old aa5d761 --label-new f5d4347 --out compare.md

Rows: attention-side decode (graph, warm) per context, one-layer prefill per context and variant, whole-model
TTFT and decode per preset, mode, lambda and context. Only rows present in both runs are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _rows(res: dict) -> dict[tuple, float]:
    out = {}
    for r in res.get("decode_attention", []):
        for key in ("lola_kernel_graph_warm_us", "merge_amortized_us_per_token", "merge_graph_amortized_us_per_token",
                    "full_sdpa_graph_warm_us"):
            if key in r:
                out[("decode, 16 layers (us/token)", key.replace("_us_per_token", "").replace("_us", ""),
                     r["ctx"])] = r[key]
    for r in res.get("prefill_attention", []):
        if "total_ms" in r:
            out[("prefill, one layer (ms)", r["variant"], r["ctx"])] = r["total_ms"]
    for r in res.get("ttft", []):
        if "ttft_ms" in r:
            lam = "" if r.get("lambda") is None else f" l={r['lambda']}"
            out[("TTFT (ms)", f"{r['preset']} {r['mode']}{lam}", r["ctx"])] = r["ttft_ms"]
    for r in res.get("merge_step", []):
        if "merge_us_per_step" in r:
            out[("phase A per chunk step (us)", f"{r['preset']} {r['merge']}", r["ctx"])] = r["merge_us_per_step"]
    for r in res.get("decode_model", []):
        if "decode_ms_per_token" in r:
            lam = "" if r.get("lambda") is None else f" l={r['lambda']}"
            impl = f" [{r['impl']}]" if r.get("impl") else ""
            out[("whole-model decode (ms/token)", f"{r['preset']} {r['mode']}{lam}{impl}", r["ctx"])] = \
                r["decode_ms_per_token"]
    return out


def compare(old: dict, new: dict, label_old: str, label_new: str) -> str:
    a, b = _rows(old), _rows(new)
    lines = [f"# gpu_bench: {label_old} vs {label_new} on {new.get('device_name', '?')}", "",
             f"- {label_old}: {old['provenance']['utc_time']}, command `{old['provenance'].get('command')}`",
             f"- {label_new}: {new['provenance']['utc_time']}, command `{new['provenance'].get('command')}`",
             "- made by `python scripts/perf_compare.py` from the two JSON files; ratio = new / old (< 1 is faster)",
             ""]
    section = None
    for key in [k for k in b if k in a]:
        if key[0] != section:
            section = key[0]
            lines += ["", f"## {section}", "", f"| what | ctx | {label_old} | {label_new} | ratio |",
                      "|---|---|---|---|---|"]
        lines.append(f"| {key[1]} | {key[2]} | {a[key]:.1f} | {b[key]:.1f} | {b[key] / a[key]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--label-old", default="old")
    ap.add_argument("--label-new", default="new")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print it)")
    args = ap.parse_args(argv)
    old, new = (json.loads(p.read_text()) for p in (args.old, args.new))
    if old.get("device_name") != new.get("device_name"):
        print(f"perf_compare: different devices ({old.get('device_name')} vs {new.get('device_name')})",
              file=sys.stderr)
        return 2
    md = compare(old, new, args.label_old, args.label_new)
    if args.out:
        args.out.write_text(md)
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
