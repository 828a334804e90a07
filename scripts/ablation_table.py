"""Write results/ruler/ablation-4k/README.md from the runs' own files (summary.csv, checkpoint-lola.json)."""
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "results" / "ruler"
OUT = ROOT / "ablation-4k" / "README.md"
RUNS = ["passkey-calibrated-4k-lola", "ablation-4k/sinks4-40steps", "ablation-4k/sinks4-40steps-offset0.5",
        "ablation-4k/sinks4-60steps-offset0.25"]
FULL = "passkey-sinks4"


def accuracy(run: str, attn: str, ctx: int = 4096) -> str:
    for r in csv.DictReader(open(ROOT / run / "summary.csv")):
        if r["attn"] == attn and int(r["ctx"]) == ctx and r["task"] == "passkey":
            return f"{float(r['accuracy']):.0f}% (n={r['n']})"
    return "-"


def describe(run: str) -> str:
    meta_file = ROOT / run / "checkpoint-lola.json"
    if not meta_file.is_file():
        cfg = json.load(open(ROOT / run / "config.json"))
        return f"`{cfg['lola_checkpoint']}` (no sinks, no offset; 40 steps at 4096, shipped in d3cc7c1)"
    m = json.load(open(meta_file))
    cal = m.get("linear_weight_calibration")
    return (f"{m.get('sinks', 0)} sinks, {m['steps']} steps ({m['tokens']:,} tokens) at {m['seq_len']}, "
            + (f"offset {cal['offset']:g} (`--calibrate`)" if cal else "no offset"))


lines = ["# What each ingredient bought at 4K: passkey, LoLA η=64 λ=512 SRE, no chat template", "",
         "Written by `python scripts/ablation_table.py` from each run's `summary.csv` and the checkpoint metadata",
         "copied beside it (`checkpoint-lola.json`; the checkpoints themselves stayed in the gitignored `work/`).",
         "Each run is `lola-bench ruler --ctx 4096 --task passkey --samples 20 --attn lola --lola-ckpt CKPT "
         "--no-chat-template` (exact command and commit in its `config.json`). The last row is the shipped checkpoint.",
         "", "| run | checkpoint | LoLA 4K |", "|---|---|---|"]
lines += [f"| `{r}` | {describe(r)} | {accuracy(r, 'lola')} |" for r in RUNS]
if (ROOT / FULL / "summary.csv").is_file():
    lines += ["", f"Full attention on the same prompts (`{FULL}`): {accuracy(FULL, 'full')}."]
lines += ["", "The three `ablation-4k` runs had the CPU to themselves (a background commonsense run was paused), so "
          "their timing columns are usable; `passkey-calibrated-4k-lola` shared it (see ../NOTES.md)."]
OUT.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
