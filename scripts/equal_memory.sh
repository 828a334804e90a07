#!/usr/bin/env bash
# LoLA vs KV-eviction baselines at equal cache bytes (issue 20): passkey, niah_single_1, niah_multikey_1, vt at 2K
# then 4K, n = 10, eta = 64; budgets 16 MiB and 40 MiB (40 MiB is about what LoLA lambda=512 costs on the embedded
# model); LoLA scored by SRE with the shipped checkpoint, eviction by StreamingLLM (sink), H2O (attention), SnapKV
# and key-norm, each choosing at every chunk boundary (boundary) and once after a full-attention prefill
# (prompt_end, the published SnapKV / H2O protocol). One resumable sweep directory: rerun to continue.
#   scripts/equal_memory.sh [OUT]      (default results/sweep/equal-memory-embedded)
# --prefill-logits all: the grid began before that flag (every cell's prefill applies the output head to every prompt
# position), so it stays one measurement and resumes where it stopped.
set -euo pipefail
OUT=${1:-results/sweep/equal-memory-embedded}
for c in 2048 4096; do
  lola-bench sweep --task passkey,niah_single_1,niah_multikey_1,vt --ctx "$c" --lambda 0 --window 64 \
    --scorer sre --evict-scorer sink,attention,snapkv,key_norm --evict-at boundary,prompt_end --budget-mib 16,40 \
    --samples 10 --prefill-logits all --out "$OUT"
done
