set -x
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name --format=csv,noheader
python3 exp/exp14.py --tp2only $OUT/gemv_tp2.json 2>&1 | grep -v '^   x\*' | grep -v "f16 {" 
TR="torchrun --standalone --nproc_per_node=2 --local-ranks-filter 0 scripts/bench.py --shape llama-2-70b --modes int8 --all_reduce symm_mem --runs 2 --new_tokens 100"
$TR --json $OUT/tp_new1.json 2>&1 | grep '^| int8'
GPTFAST_INT8_F32=1 $TR --json $OUT/tp_old1.json 2>&1 | grep '^| int8'
GPTFAST_GEMV_CONFIGS=$OUT/gemv_tp2_cfg_llama-2-70b.json $TR --json $OUT/tp_new3.json 2>&1 | grep '^| int8'
GPTFAST_INT8_F32=1 $TR --json $OUT/tp_old2.json 2>&1 | grep '^| int8'
python3 scripts/gpu_check_quant.py 2>&1 | grep -i 'int8\|correctness\|FAIL' | head -30
