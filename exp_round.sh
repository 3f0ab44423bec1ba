#!/usr/bin/env bash
# session 8 experiment: early PDL trigger and L2 prefetch in the int8 GEMV
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - T0) )); }
bench() { local name=$1; shift; [ $(left) -lt 70 ] && { echo "skip $name"; return; }
  timeout $(( $(left) - 5 )) python3 scripts/bench.py --json "$OUT/$name.json" "$@" 2>&1 \
  | tee "$OUT/$name.log" | grep "^| \|bandwidth\|Error\|error" | tail -4; echo "[$name done at $(( $(date +%s) - T0 )) s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
bench base --modes int8 --runs 3 --profile
GPTFAST_EARLY_TRIGGER=1 GPTFAST_L2_PREFETCH=1 bench both --modes int8 --runs 3
GPTFAST_L2_PREFETCH=1 bench prefetch --modes int8 --runs 3
GPTFAST_EARLY_TRIGGER=1 bench early --modes int8 --runs 3
bench base2 --modes int8 --runs 3
GPTFAST_EARLY_TRIGGER=1 GPTFAST_L2_PREFETCH=1 bench both2 --modes int8 --runs 3
[ $(left) -gt 100 ] && GPTFAST_EARLY_TRIGGER=1 GPTFAST_L2_PREFETCH=1 timeout $(( $(left) - 5 )) python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gcq.log" | grep "check\|correctness" | tail -12
