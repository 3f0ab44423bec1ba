export PYTHONUNBUFFERED=1
filter() { grep "^| int8\|bandwidth\|rror" | tail -3; }
timeout 150 python3 scripts/gpu_check.py 2>&1 | tee $OUT/gpu_check.log | grep -v -i "warn" | tail -8
timeout 150 python3 scripts/gpu_check_quant.py 2>&1 | tee $OUT/gpu_check_quant.log | grep "int8 w13\|correctness"
for v in gated nogated gated2; do
  if [ $v = nogated ]; then export GPTFAST_NO_GATED=1; else unset GPTFAST_NO_GATED; fi
  timeout 120 python3 scripts/bench.py --modes int8 --runs 3 --json $OUT/int8_$v.json 2>&1 | tee $OUT/int8_$v.log | filter
done
