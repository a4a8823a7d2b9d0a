#!/usr/bin/env bash
# The batched envs on one GPU, in one call (logs under $OUT):
#   tests      - fidelity of every port and the captured policy + env step on CUDA (HQLT_TEST_DEVICE=cuda)
#   throughput - benchmarks/throughput.py: env-only and end-to-end PPO steps/s, batched vs gymnasium envs
# Usage (repo root): bash benchmarks/gpu_batched.sh [tests] [throughput]   (default: both)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_batched}
mkdir -p "$OUT"
parts=${*:-tests throughput}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=".:/tmp/site"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $parts == *tests* ]]; then
    start=$SECONDS
    HQLT_TEST_DEVICE=cuda timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_batched_*.py \
        tests/test_cuda_graph.py tests/test_agent_rollout.py >"$OUT/tests.log" 2>&1
    echo "tests: $(tail -n 1 "$OUT/tests.log") [$((SECONDS - start))s]"
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi
if [[ $parts == *throughput* ]]; then
    start=$SECONDS
    timeout 200 python3 benchmarks/throughput.py --envs repeat_previous --num-envs 8192 --gymnasium-num-envs 256 \
        --section "Throughput (GPU): every core" --record 2>&1 | tee "$OUT/throughput_cores.log" | grep -v "^|"
    timeout 200 python3 benchmarks/throughput.py --envs tmaze,visual_match --cores lstm,hqlt --num-envs 1024,8192 \
        --gymnasium-num-envs "" --section "Throughput (GPU): sizes" --record 2>&1 | tee "$OUT/throughput_sizes.log" | grep -v "^|"
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
    echo "throughput [$((SECONDS - start))s]"
fi
