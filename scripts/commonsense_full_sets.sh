#!/usr/bin/env bash
# Issue #6 acceptance: the five full commonsense sets, offline, on the embedded model,
# for full attention, base (eta=64, lambda=0) and LoLA (eta=64, lambda=512, SRE).
# One run directory per variant, run one after another (2 cores: never two at once).
# A variant whose run directory already has summary.csv is skipped, so the script can be
# re-run after an interruption. bfloat16 halves the CPU time (measured: 200 HellaSwag
# items, batch 32: 37 s bf16 vs 69 s fp32, same acc_norm); all three variants use it.
#   usage: scripts/commonsense_full_sets.sh [DATA_DIR] [OUT_PREFIX]
set -euo pipefail
DATA=${1:-${LOLA_BENCH_DATA:-../shared/data}}
PREFIX=${2:-results/commonsense/full-sets}
BIN=${BIN:-.venv/bin}
for attn in ${VARIANTS:-full base lola}; do
  out="$PREFIX-$attn"
  if [[ -f "$out/summary.csv" ]]; then echo "skip $attn: $out/summary.csv exists"; continue; fi
  echo "== $attn -> $out ($(date -u +%FT%TZ))"
  "$BIN/lola-bench" commonsense --attn "$attn" --window 64 --lambda 512 --data-dir "$DATA" \
    --dtype bfloat16 --batch-size 32 --out "$out" --overwrite
done
