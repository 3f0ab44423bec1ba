#!/usr/bin/env bash
# exp (session 18): int4 g32 through the float16-pair kernel end to end, the final int4 rule's GPU check, a g32 sweep.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bench() { local name=$1; shift; timeout 300 python3 scripts/bench.py --json "$OUT/$name.json" "$@" 2>&1 \
  | tee "$OUT/$name.log" | grep "^| \|bandwidth" | tail -6; }
cfg() { echo "{\"int4_f16\": {\"BLOCK_N\": $1, \"BLOCK_K\": $2, \"num_warps\": $3}, \"int4_f16_gated\": {\"BLOCK_N\": $4, \"BLOCK_K\": $5, \"num_warps\": $6}}" > /tmp/$7.json; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv
case "${1:-a}" in
  a)
    bench g32_f32 --modes int4 --runs 2
    cfg 4 2048 2 4 2048 2 c; GPTFAST_INT4_F16_GROUPS=32,64,128 GPTFAST_GEMV_CONFIGS=/tmp/c.json bench g32_f16_c --modes int4 --runs 2
    cfg 4 2048 2 8 1024 1 d; GPTFAST_INT4_F16_GROUPS=32,64,128 GPTFAST_GEMV_CONFIGS=/tmp/d.json bench g32_f16_d --modes int4 --runs 2
    timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gpu_check_quant.log" | grep "check\|correctness"
    timeout 170 python3 scripts/bench_gemv.py --kinds int4,int4_f16 --groups 32 --budget_s 70 --json "$OUT/gemv_g32.json" 2>&1 \
      | tee "$OUT/gemv_g32.log" | grep -v -i warn | tail -30 ;;
  b)
    bench int4_new --modes int4,int4-g64,int4-g128 --runs 2
    GPTFAST_INT4_F32=1 bench int4_f32 --modes int4,int4-g64,int4-g128 --runs 2
    timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gpu_check_quant.log" | grep "check int4\|correctness\|int4 g"
    timeout 120 python3 scripts/bench_gemv.py --kinds int4_f16 --groups 64,128 --budget_s 50 \
      --configs_out "$OUT/cfg.json" 2>&1 | tee "$OUT/gemv_f16.log" | grep -A30 "best launch"
    timeout 150 python3 scripts/gpu_check.py 2>&1 | tee "$OUT/gpu_check.log" | grep -v -i warn | tail -8 ;;
  c)
    bench all --modes bf16,int8,int4,int4-g64,int4-g128 --runs 2
    timeout 150 python3 scripts/bench_gemv.py --kinds int8_f16 --budget_s 70 --json "$OUT/gemv_int8.json" 2>&1 \
      | tee "$OUT/gemv_int8.log" | grep -A12 "best launch" ;;
  d)
    bench new --modes int8,int4,int4-g128 --runs 2
    echo '{"int8_f16_wide": {"BLOCK_N": 8, "BLOCK_K": 2048, "num_warps": 4}}' > /tmp/o.json
    GPTFAST_GEMV_CONFIGS=/tmp/o.json bench int8_old --modes int8 --runs 2
    bench new2 --modes int8 --runs 2
    timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gpu_check_quant.log" | grep "int8 wqkv\|correctness\|int8 triton\|int4 g.* triton" ;;
esac
