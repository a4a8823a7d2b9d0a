#!/usr/bin/env bash
# Several benchmark commands side by side on one GPU machine, in one device call.
#   bash benchmarks/gpu_run.sh "COMMAND" ["COMMAND" ...]
# Installs the carried wheels (benchmarks/fetch_wheels.sh downloads them; every *.whl in the folders WHEELS names
# that exist, default ".whl .whl-minigrid": carry .whl-minigrid (pygame-ce, 12 MB) only for runs that make MiniGrid
# envs) into /tmp/site, runs every COMMAND at once from
# the repo root (each one's output in $OUT/logs.tar.gz as <k>.log), waits for all, then packs what
# they wrote: benchmarks/RESULTS.md, and the TensorBoard events and PNGs under RUNS (default runs/) into
# $OUT/runs.tar.gz (checkpoints left out). With CHECKPOINTS=1, each run's newest checkpoint also goes into
# $OUT/checkpoints.tar.gz (same paths under RUNS), so that a later call can carry it back and resume the
# run (`memory_suite.py --resume`) on a fresh machine when the warm one (whose /tmp keeps RUNS) was given back.
# Files ignored by git do not outlive the session, so a run must reach its budget within one session.
# A tarball over 15 MiB (the largest file that comes back is 16 MiB) comes back in parts, checkpoints.tar.gz.00, .01, ...: `cat checkpoints.tar.gz.* > checkpoints.tar.gz`.
# Aligned runs (agent.align_episodes) save no memory state: a paper-size hqlt checkpoint is about 11 MB (10 MB
# compressed), so about 5 of them fit beside the repo and the wheels in a call's 64 MiB. To resume on a fresh
# machine, put the returned runs.tar.gz and the joined checkpoints.tar.gz in .resume/ (ignored by git), carry it,
# and start the command with `tar xzf .resume/runs.tar.gz -C /tmp && tar xzf .resume/checkpoints.tar.gz -C /tmp`
# (with RUNS=/tmp/r), then `memory_suite.py ... --resume --log-dir /tmp/r/<suite dir>`.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_run}
WHEELS=${WHEELS:-.whl .whl-minigrid}
RUNS=${RUNS:-runs}  # where the commands write their runs (outside a carried folder, to outlive the next call)
mkdir -p "$OUT" logs
export PYTHONUNBUFFERED=1
wheels=$(for dir in $WHEELS; do [ -d "$dir" ] && ls "$dir"/*.whl; done)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels \
    >"$OUT/pip.log" 2>&1 || { echo "wheel install failed"; cat "$OUT/pip.log"; exit 1; }
export PYTHONPATH=".:/tmp/site"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
start=$SECONDS
pids=()
for k in $(seq 1 $#); do
    command=${!k}
    echo "[$k] $command"
    bash -c "$command" >"logs/$k.log" 2>&1 &
    pids+=($!)
done
for k in "${!pids[@]}"; do
    wait "${pids[$k]}"
    echo "[$((k + 1))] exit $? after $((SECONDS - start)) s: $(tail -n 1 "logs/$((k + 1)).log")"
done
tar -czf "$OUT/logs.tar.gz" logs
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
[ -d "$RUNS" ] && tar -czf "$OUT/runs.tar.gz" --exclude="*.pt" -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
if [ "${CHECKPOINTS:-0}" = 1 ] && [ -d "$RUNS" ]; then
    newest=$(for dir in $(find "$RUNS" -type d -name checkpoints); do ls -1 "$dir"/step*.pt 2>/dev/null | sort | tail -n 1; done)
    [ -n "$newest" ] && tar -czf "$OUT/checkpoints.tar.gz" -C "$(dirname "$RUNS")" \
        $(for path in $newest; do realpath --relative-to="$(dirname "$RUNS")" "$path"; done)
    if [ -f "$OUT/checkpoints.tar.gz" ] && [ "$(stat -c %s "$OUT/checkpoints.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15M -d "$OUT/checkpoints.tar.gz" "$OUT/checkpoints.tar.gz." && rm "$OUT/checkpoints.tar.gz"
    fi
fi
ls -la "$OUT"
