#!/usr/bin/env bash
# session-17 experiment (not committed): L2 prefetch of the next product's weights. Each arg mode:MB:kind:normMB
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader
for v in "$@"; do
  set -- ${v//:/ }
  mode=$1 mb=$2 kind=$3 nmb=$4; n=${mode}_${mb}_${kind}_$nmb
  t0=$(date +%s)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$n GPTFAST_PREFETCH_MB=$mb GPTFAST_PF_KIND=$kind GPTFAST_PF_NORM_MB=$nmb \
    timeout 200 python3 scripts/bench.py --modes $mode --runs 1 --new_tokens 100 --profile --json "$OUT/$n.json" > "$OUT/$n.log" 2>&1
  echo "== $n rc=$? $(( $(date +%s) - t0 )) s"; grep "^| $mode\|rror" "$OUT/$n.log" | tail -1; grep -A7 "per decode step" "$OUT/$n.log" | cut -c1-120
done
