#!/usr/bin/env bash
# session 8, round 2: the RMSNorm and the residual add inside the int8 GEMVs
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
T0=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - T0) )); }
bench() { local name=$1; shift; [ $(left) -lt 60 ] && { echo "skip $name"; return; }
  timeout $(( $(left) - 5 )) python3 scripts/bench.py --json "$OUT/$name.json" "$@" 2>&1 \
  | tee "$OUT/$name.log" | grep "^| \|bandwidth\|Error\|error" | tail -3; echo "[$name done at $(( $(date +%s) - T0 )) s]"; }
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee "$OUT/gcq.log" | grep "check\|correctness\|Error" | tail -24
echo "[gcq done at $(( $(date +%s) - T0 )) s]"
bench fused --modes int8 --runs 3 --profile
GPTFAST_NO_FUSED_NORM=1 bench nofused --modes int8 --runs 3
echo '{"int8": {"BLOCK_N": 4, "BLOCK_K": 512, "num_warps": 2}}' > /tmp/c512.json
GPTFAST_GEMV_CONFIGS=/tmp/c512.json bench fused_4_512 --modes int8 --runs 3
bench fused2 --modes int8 --runs 3
bench bf16 --modes bf16 --runs 3
(cd old_tree && bench bf16_old --modes bf16 --runs 3)
GPTFAST_NO_FUSED_NORM=1 bench nofused2 --modes int8 --runs 3
