nvidia-smi --query-gpu=name --format=csv,noheader
python3 exp/exp14c.py $OUT/int4.json 2>&1 | grep -v '^g' 
python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/new_d.json 2>&1 | grep '^| int8'
GPTFAST_INT8_F32=1 python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/old_d.json 2>&1 | grep '^| int8'
python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/new_d2.json 2>&1 | grep '^| int8'
python3 scripts/gpu_check.py 2>&1 | tail -3
