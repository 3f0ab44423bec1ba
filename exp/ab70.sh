# 70B int8 on 2 GPUs: this tree (int8_gated_large) against HEAD (old.tar), then gpu_check_quant on GPU 0.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
nvidia-smi -L
mkdir -p /tmp/old && tar -xf old.tar -C /tmp/old
TR="torchrun --standalone --nproc_per_node=2 --local-ranks-filter 0"
ARGS="--shape llama-2-70b --modes int8 --all_reduce symm_mem --runs 2 --new_tokens 100"
step() { local name=$1 dir=$2; shift 2; local t0=$(date +%s); (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$name timeout 170 $TR scripts/bench.py $ARGS --json $OUT/$name.json > $OUT/$name.log 2>&1); echo "== $name rc=$? $(( $(date +%s) - t0 )) s"; tail -2 $OUT/$name.log; }
step new1 $PWD
step old1 /tmp/old
step new2 $PWD
t0=$(date +%s); CUDA_VISIBLE_DEVICES=0 timeout 150 python3 scripts/gpu_check_quant.py > $OUT/gcq.log 2>&1; echo "== gcq rc=$? $(( $(date +%s) - t0 )) s"; grep -E "w13|correctness" $OUT/gcq.log
