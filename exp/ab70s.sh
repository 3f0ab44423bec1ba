# One H100: Llama-2-70B widths, 20 layers (exp/l70x20.json), int8: this tree against HEAD (old.tar).
nvidia-smi -L
mkdir -p /tmp/old && tar -xf old.tar -C /tmp/old && cp exp/l70x20.json /tmp/old/
ARGS="--modes int8 --runs 3 --new_tokens 100"
step() { local name=$1 dir=$2; local t0=$(date +%s); (cd $dir && TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$name timeout 150 python3 scripts/bench.py --shape $3 $ARGS --json $OUT/$name.json > $OUT/$name.log 2>&1); echo "== $name rc=$? $(( $(date +%s) - t0 )) s"; tail -1 $OUT/$name.log; }
step new1 $PWD $PWD/exp/l70x20.json
step old1 /tmp/old /tmp/old/l70x20.json
step new2 $PWD $PWD/exp/l70x20.json
