# issue 8, call A: 4 GPUs. Correctness + all-reduce + 7B speeds on 4, 1, 2 GPUs.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi -L; nvidia-smi topo -m | head -6; git log --oneline | head -1
TR="torchrun --standalone --local-ranks-filter 0"
step() { local name=$1; shift; local t0=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$name "$@" > $OUT/$name.log 2>&1; echo "== $name rc=$? $(( $(date +%s) - t0 )) s"; tail -${TAIL:-6} $OUT/$name.log; }
TAIL=24 step check4 timeout 260 $TR --nproc_per_node=4 scripts/gpu_check_tp.py --new_tokens 100
step b4 timeout 110 $TR --nproc_per_node=4 scripts/bench.py --modes bf16 --runs 2 --new_tokens 100 --all_reduce symm_mem --json $OUT/b4.json
step b1 timeout 90 python3 scripts/bench.py --modes bf16 --runs 2 --new_tokens 100 --json $OUT/b1.json
step b2 timeout 100 $TR --nproc_per_node=2 scripts/bench.py --modes bf16 --runs 2 --new_tokens 100 --all_reduce symm_mem --json $OUT/b2.json
