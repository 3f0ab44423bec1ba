#!/usr/bin/env bash
# session-17 experiment (not committed as is): the float16-pair int4 GEMV against the shipped one
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
timeout 200 python3 scripts/bench_gemv.py --kinds int4,int4_f16 --budget_s 40 --json $OUT/gemv.json > $OUT/gemv.log 2>&1
echo "gemv rc=$? $(( $(date +%s) - t0 )) s"; grep -A30 "best launch shapes" $OUT/gemv.log | grep "int4\|tinygemm"; grep ERROR $OUT/gemv.log | head -3
python3 - "$OUT" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from bench_gemv import best_configs
out = sys.argv[1]
rows = json.load(open(f"{out}/gemv.json"))["rows"]
cfg = {}
for G in (32, 64, 128):
    ranked, n = best_configs(rows, f"int4_f16 g{G}", 1)
    if ranked:
        cfg[str(G)] = ranked[0][1]
json.dump(cfg, open(f"{out}/f16.json", "w"))
print("f16 configs", cfg)
errs = [r["rel_err"] for r in rows if r["kind"].startswith("int4_f16")]
print("int4_f16 rel err max", max(errs) if errs else None)
PY
for v in base f16; do
  t1=$(date +%s)
  if [ $v = f16 ]; then export GPTFAST_INT4_F16=1 GPTFAST_GEMV_CONFIGS=$OUT/f16.json; fi
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$v timeout 150 python3 scripts/bench.py --modes int4,int4-g128 --runs 2 --json $OUT/e2e_$v.json > $OUT/e2e_$v.log 2>&1
  echo "== e2e $v rc=$? $(( $(date +%s) - t1 )) s"; grep "^| int4\|rror" $OUT/e2e_$v.log | tail -2
done
t1=$(date +%s)
timeout 110 python3 scripts/gpu_check_quant.py > $OUT/gpu_check_quant.log 2>&1
echo "gpu_check_quant (f16 on) rc=$? $(( $(date +%s) - t1 )) s"; grep -i "int4\|correctness\|FAIL" $OUT/gpu_check_quant.log | cut -c1-160 | tail -14
