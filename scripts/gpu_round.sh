#!/usr/bin/env bash
# One device call: the engine's GPU check, then the bf16 benchmark rows cited in BENCHMARKS.md.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
filter() { grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$"; }
timeout 150 python3 scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | filter | tail -8
timeout 200 python3 scripts/bench.py --shape llama-2-7b --attention matmul,sdpa --sampling default,greedy \
  --context 8192 --profile --warm_start --json "$OUT/bench_7b.json" 2>&1 | tee "$OUT/bench_7b.log" | filter | tail -14
timeout 150 python3 scripts/bench.py --shape llama-2-7b --batch_sizes 8,32 --prompt_lengths 5,2048 --runs 3 \
  --json "$OUT/bench_7b_batch.json" 2>&1 | tee "$OUT/bench_7b_batch.log" | filter | tail -6
timeout 100 python3 scripts/bench.py --shape llama-3-8b --json "$OUT/bench_l3.json" 2>&1 | tee "$OUT/bench_l3.log" | filter | tail -3
