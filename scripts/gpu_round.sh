#!/usr/bin/env bash
# One device call on a GPU machine, within a call's 600 s: `bash scripts/gpu_round.sh engine` (default) runs the
# engine's GPU check and the bf16 rows BENCHMARKS.md cites; `quant` the quantized kernels' check and the int8/int4
# rows, int8 with and without the SwiGLU in the w13 GEMV (GPTFAST_NO_GATED=1: a SwiGLU kernel of its own) and with and
# without the skinny kernel for 2-16 rows (GPTFAST_NO_SKINNY=1: the old dequantize + cuBLAS).
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
filter() { grep -v -i "warn\|online softmax\|split the reduction\|important use case\|^$"; }
bench() { local name=$1; shift; timeout 150 python3 scripts/bench.py --json "$OUT/$name.json" "$@" 2>&1 \
  | tee "$OUT/$name.log" | filter | grep "^| \|bandwidth" | tail -6; }
case "${1:-engine}" in
  engine)
    timeout 150 python3 scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | filter | tail -8
    bench bf16 --modes bf16 --batch_sizes 1,8 --sampling default,greedy --warm_start
    bench llama3 --shape llama-3-8b ;;
  quant)
    timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gpu_check_quant.log" | grep "check\|correctness"
    bench int8 --modes int8 --batch_sizes 1,8 --runs 2
    GPTFAST_NO_GATED=1 bench int8_no_gated --modes int8 --runs 2
    GPTFAST_NO_SKINNY=1 bench int8_no_skinny --modes int8 --batch_sizes 8 --runs 2
    bench int4 --modes int4,int4-g128 --runs 2
    timeout 100 python3 scripts/bench_gemv.py --kinds skinny_int8 --rows 5 --budget_s 60 2>&1 \
      | tee "$OUT/gemv_skinny_int8.log" | grep -A2 "best launch shapes" ;;
  *) echo "usage: bash scripts/gpu_round.sh [engine|quant]" >&2; exit 2 ;;
esac
