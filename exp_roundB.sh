export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
T="torchrun --standalone"
timeout 230 $T --nproc_per_node=4 scripts/gpu_check_tp.py --new_tokens 50 --int8_70b 80 2>&1 | tee $OUT/check_tp4.log | grep -v -i "warn\|^W1\|^\s*$" | tail -22
timeout 80 $T --nproc_per_node=2 scripts/bench.py --modes bf16 --all_reduce symm_mem --runs 2 --new_tokens 100 --json $OUT/tp2.json 2>&1 | tee $OUT/tp2.log | grep "^| \|bandwidth" | tail -3
timeout 110 $T --nproc_per_node=4 scripts/bench.py --shape llama-2-70b --modes bf16 --all_reduce symm_mem --runs 2 --new_tokens 100 --json $OUT/tp4_70b.json 2>&1 | tee $OUT/tp4_70b.log | grep "^| \|bandwidth" | tail -3
