# issue 8, call B: 4 GPUs, Llama-2-70B shape bf16 and int8.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
TR="torchrun --standalone --local-ranks-filter 0"
step() { local name=$1; shift; local t0=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$name "$@" > $OUT/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 )) s"; tail -${TAIL:-8} $OUT/$name.log; }
step b70 timeout 330 $TR --nproc_per_node=4 scripts/bench.py --shape llama-2-70b --modes bf16,int8 --runs 2 --new_tokens 100 --all_reduce symm_mem --json $OUT/b70.json
step b70nccl timeout 200 $TR --nproc_per_node=4 scripts/bench.py --shape llama-2-70b --modes bf16 --runs 2 --new_tokens 100 --json $OUT/b70n.json
