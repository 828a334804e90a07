#!/usr/bin/env bash
# The full offline RULER suite on the embedded model (issue 20): 11 RULER tasks without QA data + passkey, n = 10,
# at 1K / 2K / 4K, for full attention, base (eta=64, lambda=0) and LoLA (eta=64, lambda=512) with the shipped
# checkpoint, then LoLA training-free (hedgehog-identity). One resumable sweep directory: rerun to continue.
# Between the two, passkey and niah_single_1 at 8K (SmolLM2's limit) for full / base / LoLA, in their own sweep.
#   scripts/ruler_suite.sh [OUT] [OUT_8K]      (defaults results/sweep/ruler-suite-embedded, .../ruler-8k-embedded)
# It ran on 2 shared cores with OMP_NUM_THREADS=1 (about 1.6 h for the 1K part while other jobs ran).
# --prefill-logits all: these grids began before that flag; every cell applies the output head to every prompt
# position in its prefill (TTFT, peak memory), so the grid stays one measurement and resumes where it stopped.
set -euo pipefail
OUT=${1:-results/sweep/ruler-suite-embedded}
OUT_8K=${2:-results/sweep/ruler-8k-embedded}
TASKS=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery,vt,cwe,fwe,passkey
for c in 1024 2048 4096; do
  lola-bench sweep --task "$TASKS" --ctx "$c" --lambda 0,512 --window 64 --samples 10 --prefill-logits all --out "$OUT"
done
lola-bench sweep --task passkey,niah_single_1 --ctx 8192 --lambda 0,512 --window 64 --samples 10 --prefill-logits all \
  --out "$OUT_8K"
for c in 1024 2048 4096; do
  lola-bench sweep --task "$TASKS" --ctx "$c" --lambda 512 --window 64 --feature-map hedgehog-identity --no-full \
    --samples 10 --prefill-logits all --out "$OUT"
done
