export PYTHONUNBUFFERED=1
filter() { grep "tok/s\|^| \|bandwidth\|rror" | tail -5; }
timeout 150 python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/int8.json 2>&1 | tee $OUT/int8.log | filter
GPTFAST_NO_GATED=1 timeout 150 python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/int8_nogated.json 2>&1 | tee $OUT/int8_ng.log | filter
GPTFAST_GEMV_CONFIGS=exp_gated_cfg.json timeout 150 python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/int8_512.json 2>&1 | tee $OUT/int8_512.log | filter
