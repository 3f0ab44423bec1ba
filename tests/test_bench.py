"""scripts/bench.py runs on CPU with a tiny shape and fails clearly without a GPU; bench_gemv.py's floor kernel."""
import json

import pytest
import torch
from conftest import run_cli


def test_bench_cpu_tiny(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("scripts/bench.py", "--shape", "tiny", "--device", "cpu", "--no_compile", "--batch_sizes", "1,2",
                "--prompt_lengths", "5,9", "--new_tokens", "8", "--context", "64", "--runs", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    cases = [(row["batch"], row["prompt"]) for row in result["rows"]]
    assert cases == [(1, 5), (1, 9), (2, 5), (2, 9), (1, 56)]
    assert all(row["tok_s"] > 0 and row["ttft_ms"] > 0 for row in result["rows"])
    assert "| mode | sampling | batch |" in r.stdout and r.stdout.count("| bf16 |") == 5


def test_bench_without_gpu_or_with_bad_shape():
    if not torch.cuda.is_available():
        r = run_cli("scripts/bench.py", "--device", "cuda")
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("scripts/bench.py", "--shape", "gpt-5", "--device", "cpu")
    assert r.returncode == 2 and "unknown --shape" in r.stderr
    for extra, message in [(["--new_tokens", "1"], "--new_tokens must be at least 2"),
                           (["--runs", "0"], "--runs must be at least 1"),
                           (["--batch_sizes", "1,x"], "--batch_sizes '1,x': give positive integers"),
                           (["--modes", "int4-gptq"], "--modes: unknown mode 'int4-gptq'"),
                           (["--draft", "bogus"], "--draft: unknown mode 'bogus'"),
                           (["--sampling", "hot"], "--sampling 'hot'"),
                           (["--context", "8", "--new_tokens", "8"], "--context 8 leaves no prompt"),
                           (["--json", "/nonexistent/dir/out.json"], "--json /nonexistent/dir/out.json"),
                           (["--new_tokns", "4"], "unrecognized arguments")]:
        r = run_cli("scripts/bench.py", "--shape", "tiny", "--device", "cpu", *extra)
        errors = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(errors) == 1 and message in errors[0], (extra, r.stderr)
    r = run_cli("scripts/bench.py", "--all_reduce", "symm_mem", "--device", "cpu")
    assert r.returncode == 2 and "--all_reduce symm_mem needs --device cuda and torchrun" in r.stderr and "Traceback" not in r.stderr


def test_bench_speculative_row(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("scripts/bench.py", "--shape", "tiny", "--device", "cpu", "--no_compile", "--new_tokens", "20",
                "--runs", "1", "--sampling", "greedy", "--draft", "self", "--json", out)
    assert r.returncode == 0, r.stderr
    spec = json.loads(out.read_text())["rows"][-1]
    assert spec["mode"] == "spec self k=5" and spec["acceptance"] == 1.0 and spec["verify_ms"] > 0


def test_bench_tensor_parallel_cpu(tmp_path):
    """Under torchrun each rank times its shard (gloo on CPU); rank 0 alone reports."""
    out = tmp_path / "bench.json"
    r = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "scripts/bench.py",
                "--shape", "tiny", "--device", "cpu", "--no_compile", "--new_tokens", "8", "--runs", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert "tensor parallel over 2" in result["source"] and len(result["rows"]) == 1
    assert r.stdout.count("| bf16 |") == 1


def test_bench_compiled_with_warm_start(tmp_path):
    """--compile's path on CPU, and the warm-start probe: a second process that compiles from the cache."""
    out = tmp_path / "bench.json"
    r = run_cli("scripts/bench.py", "--shape", "tiny", "--device", "cpu", "--new_tokens", "8", "--runs", "1",
                "--warm_start", "--json", out)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert 0 < result["warm_start_s"] < result["warm_start_exit_s"] and result["rows"][0]["tok_s"] > 0  # nan: not > 0
    assert "probe: imports" in r.stderr and "inductor graph cache" in r.stderr


FLOOR_CHECK = """
import sys, torch
sys.path.insert(0, "scripts")
import bench_gemv as B
w = torch.randint(-2**31, 2**31 - 1, (5000,), dtype=torch.int32)
want = 0
for v in w.tolist():
    want ^= v
for chunk, block in ((1024, 256), (4096, 512), (2048, 2048)):  # a partial last chunk, a chunk of one tile
    got = 0
    for v in B.read_launch(w, chunk, block, 1).tolist():
        got ^= v
    assert got == want, (chunk, block)
print("ok")
"""


def test_bench_gemv_floor_reads_every_word_once():
    """bench_gemv.py --kinds floor times _read_kernel as the floor of a product's bytes: in Triton's CPU interpreter,
    its chunks XOR every word exactly once (a word skipped or read twice changes the XOR of random words)."""
    pytest.importorskip("triton")
    r = run_cli("-c", FLOOR_CHECK, env={"TRITON_INTERPRET": "1"})
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]
