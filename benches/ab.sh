#!/usr/bin/env bash
# A/B throughput of lmforge-bench binaries built from different commits, run alternately so the
# machine's noise hits each alike:
#
#   cp target/release/lmforge-bench /tmp/bench-a     # build A, copy; build B, copy
#   bash benches/ab.sh bert-mlm-train 3 /tmp/bench-a /tmp/bench-b
#
# Prints, per binary, the throughput of each run (tokens/s, or GFLOP/s for matmul cases).
set -euo pipefail
case_name=$1 rounds=$2
shift 2
threads=${RAYON_NUM_THREADS:-2}
for _ in $(seq "$rounds"); do
    for bin in "$@"; do
        rate=$(RAYON_NUM_THREADS=$threads "$bin" --case "$case_name" --repeats 5 2>/dev/null |
            python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        m = json.loads(line)
        print(round(m["tokens_per_s"] or m["gflops"]), end=" ")')
        echo "$bin $rate"
    done
done | awk '{ name = $1; $1 = ""; runs[name] = runs[name] $0 } END { for (n in runs) print n ":" runs[n] }'
