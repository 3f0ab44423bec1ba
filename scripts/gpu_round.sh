#!/usr/bin/env bash
# One device call on a GPU machine: the engine's GPU check, then the benchmark rows BENCHMARKS.md cites.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
filter() { grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$"; }
timeout 150 python3 scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | filter | tail -8
timeout 300 python3 scripts/bench.py --shape llama-2-7b --batch_sizes 1,8,32 --sampling default,greedy --context 8192 \
  --warm_start --json "$OUT/bench_7b.json" 2>&1 | tee "$OUT/bench_7b.log" | filter | grep -v "^{" | tail -10
timeout 200 python3 scripts/bench.py --shape llama-2-7b --modes int8,int4,int4-g64,int4-g128 \
  --json "$OUT/bench_quant.json" 2>&1 | tee "$OUT/bench_quant.log" | filter | grep -v "^{" | tail -6
timeout 100 python3 scripts/bench.py --shape llama-3-8b --json "$OUT/bench_l3.json" 2>&1 | tee "$OUT/bench_l3.log" | filter | tail -3
