#!/usr/bin/env bash
# Everything the kernels need from a GPU, in one call (logs under $OUT, a short summary last):
#   tests  - tests/test_triton_kernels.py at realistic shapes
#   bench  - benchmarks/kernels.py (core ops vs peers, rollout step under CUDA graphs)
#   e2e    - PPO steps/s of train_rl.py with the hqlt core, reference ops vs Triton kernels (after a warm-up run each)
# Usage (repo root): bash benchmarks/gpu_suite.sh [tests] [bench] [e2e]    (default: tests bench)
# Wheels missing on the machine (fla-core, gymnasium, ...) are installed from .whl/ when present.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_suite}
mkdir -p "$OUT"
parts=${*:-tests bench}
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/pip.log" 2>&1 || echo "wheel install failed (see pip.log)"
    export PYTHONPATH=".:/tmp/site"
else
    export PYTHONPATH="."
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
summary=()

if [[ $parts == *tests* ]]; then
    start=$SECONDS
    timeout ${TESTS_TIMEOUT:-240} python3 -m pytest tests/test_triton_kernels.py -q -n 8 -p no:cacheprovider >"$OUT/tests.log" 2>&1
    summary+=("tests: $(tail -n 1 "$OUT/tests.log") [$((SECONDS - start))s]")
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
fi

if [[ $parts == *bench* ]]; then
    start=$SECONDS
    timeout ${BENCH_TIMEOUT:-330} python3 benchmarks/kernels.py --save-dir "$OUT" ${BENCH_ARGS:-} >"$OUT/bench.log" 2>"$OUT/bench.err"
    summary+=("bench: exit $? [$((SECONDS - start))s]")
    tail -n 40 "$OUT/bench.err"
    cat "$OUT/bench.log"
fi

if [[ $parts == *e2e* ]]; then
    # A short run per backend first fills Triton's compile cache, so that the measured run is steady state.
    for backend in reference triton; do
        for run in warmup measured; do
            steps=$([[ $run == warmup ]] && echo 4096 || echo "${E2E_STEPS:-65536}")
            start=$SECONDS
            HQLT_BACKEND=$backend timeout 240 python3 train_rl.py memory=hqlt env=repeat_previous_easy device=cuda \
                total_steps=$steps agent.num_envs=${E2E_ENVS:-64} progress=false eval.interval=10000000 \
                log_dir="$OUT/runs_$backend" >"$OUT/e2e_${backend}_$run.log" 2>&1
            summary+=("e2e $backend $run: exit $? $(grep -o '[0-9.]* steps/s' "$OUT/e2e_${backend}_$run.log" | tail -n 1) [$((SECONDS - start))s]")
        done
    done
    rm -rf "$OUT"/runs_*
fi

printf '%s\n' "${summary[@]}"
