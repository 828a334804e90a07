#!/bin/bash
# Issue #7 acceptance on the embedded model: run a sweep, kill -9 it part-way, resume it, re-run it (a no-op),
# and check that sweep.csv holds every cell exactly once. Then the scorer ablation at equal lambda.
# Usage: scripts/sweep_acceptance.sh [OUT_ROOT]   (default results/sweep; ~20 min on 2 CPU cores)
set -euo pipefail
root=${1:-results/sweep}
out=$root/niah-embedded-lambda
args=(--lambda 0,128,512 --window 64 --ctx 1024,2048 --task niah_single_1 --samples 10 --out "$out")
rows() { if [ -f "$out/sweep.csv" ]; then echo $(( $(wc -l < "$out/sweep.csv") - 1 )); else echo 0; fi; }

t0=$(date +%s.%N)
lola-bench sweep "${args[@]}" & pid=$!
while [ "$(rows)" -lt 5 ]; do sleep 2; kill -0 $pid 2>/dev/null || { echo "sweep ended before the kill"; exit 1; }; done
sleep 20                                   # part-way into the next cell
kill -9 $pid; wait $pid || true
t1=$(date +%s.%N)
echo "killed after $(rows) finished cells"
lola-bench sweep "${args[@]}"
t2=$(date +%s.%N)
lola-bench sweep "${args[@]}"
t3=$(date +%s.%N)
python - "$out/sweep.csv" "$t0" "$t1" "$t2" "$t3" <<'PY'
import sys
import pandas as pd
df = pd.read_csv(sys.argv[1])
t0, t1, t2, t3 = map(float, sys.argv[2:])
dup = int(df.duplicated(["cell_id", "task", "ctx"]).sum())
print(f"rows {len(df)}, distinct cells {df.cell_id.nunique()}, duplicated rows {dup}")
first = (t1 - t0) + (t2 - t1)
print(f"killed run {t1 - t0:.1f} s + resume {t2 - t1:.1f} s = {first:.1f} s; no-op re-run {t3 - t2:.1f} s "
      f"({100 * (t3 - t2) / first:.1f}% of the first run)")
assert len(df) == 8 and dup == 0, "rows lost or duplicated"
PY
lola-bench sweep --scorer sre,random,key_norm,recency --lambda 128 --window 64 --ctx 1024,2048 \
    --task niah_single_1 --samples 10 --out "$root/niah-embedded-scorers"
