#!/usr/bin/env bash
# One device call on a GPU machine, within a call's 600 s: `bash scripts/gpu_round.sh engine` (default) runs the
# engine's GPU check and the bf16 rows BENCHMARKS.md cites; `quant` the quantized kernels' check and the int8/int4
# rows, int8 with and without the SwiGLU in the w13 GEMV (GPTFAST_NO_GATED=1: a SwiGLU kernel of its own), with and
# without the residual add in the wo and w2 GEMVs (GPTFAST_NO_FUSED_ADD=1) and with and without the skinny kernel for
# 2-16 rows (GPTFAST_NO_SKINNY=1: the old dequantize + cuBLAS), int4 on the Triton GEMVs (float16 pairs, and the
# float32-word one with GPTFAST_INT4_F32=1) and on tinygemm (GPTFAST_INT4=tinygemm); `shapes` the float16-pair GEMVs'
# launch shapes swept on this GPU and 7B decode at them against CONFIGS' (for a GPU other than the H200 that chose
# them: BENCHMARKS.md runs 164-169); `tp N` tensor parallel on N
# GPUs: gpu_check_tp.py, then bench.py on one GPU, the 7B shape on N and the 70B shape (bf16, int8) on N.
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
    GPTFAST_NO_FUSED_ADD=1 bench int8_no_fused_add --modes int8 --runs 2
    GPTFAST_NO_SKINNY=1 bench int8_no_skinny --modes int8 --batch_sizes 8 --runs 2
    bench int4 --modes int4,int4-g64,int4-g128 --runs 2
    GPTFAST_INT4_F32=1 bench int4_f32 --modes int4,int4-g64,int4-g128 --runs 2
    GPTFAST_INT4=tinygemm bench int4_tinygemm --modes int4,int4-g128 --runs 2
    timeout 100 python3 scripts/bench_gemv.py --kinds skinny_int8 --rows 5 --budget_s 60 2>&1 \
      | tee "$OUT/gemv_skinny_int8.log" | grep -A2 "best launch shapes" ;;
  shapes)  # the float16-pair GEMVs' launch shapes swept on this GPU, then 7B decode at CONFIGS' shapes and at the swept
    # ones (run 169's sweep, the same command, took under 2 minutes on an H200)
    timeout 300 python3 scripts/bench_gemv.py --kinds int8_f16,int4_f16 --groups 32,128 --budget_s 250 \
      --configs_out "$OUT/shapes.json" 2>&1 | tee "$OUT/gemv_shapes.log" | grep -A12 "best launch"
    bench shapes_default --modes int8,int4,int4-g128 --runs 2
    GPTFAST_GEMV_CONFIGS="$OUT/shapes.json" bench shapes_swept --modes int8,int4,int4-g128 --runs 2 ;;
  tp)  # on a multi-GPU kind: bash scripts/gpu_round.sh tp N. Runs 79-82 (BENCHMARKS.md) ran these commands one by one
    # with N = 2 or 4 on H200s, about 350 s in all; the 70B shape in bf16 peaked at 35.4 GB a GPU with N = 4.
    export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
    N=${2:-2}; T="torchrun --standalone"
    timeout 230 $T --nproc_per_node=$N scripts/gpu_check_tp.py --new_tokens 50 --int8_70b 80 2>&1 \
      | tee "$OUT/gpu_check_tp.log" | filter | tail -20
    bench tp1_7b --modes bf16 --runs 2 --new_tokens 100
    tbench() { local name=$1; shift; timeout 150 $T --nproc_per_node=$N scripts/bench.py --json "$OUT/$name.json" \
      --all_reduce symm_mem --runs 2 --new_tokens 100 "$@" 2>&1 | tee "$OUT/$name.log" | grep "^| \|bandwidth" | tail -3; }
    tbench tp_7b --modes bf16
    tbench tp_70b --shape llama-2-70b --modes bf16,int8 ;;
  *) echo "usage: bash scripts/gpu_round.sh [engine|quant|shapes|tp N]" >&2; exit 2 ;;
esac
