#!/usr/bin/env bash
# The wheels the GPU machine lacks (its image has torch, Triton, numpy, tensorboard, ...; not gymnasium,
# popgym, hydra-core, omegaconf), downloaded here for Linux x86-64 and CPython 3.12 into .whl/ (ignored
# by git; carry it to the machine: benchmarks/gpu_run.sh installs every wheel there). Each version is the
# one this machine's environment holds. With `minigrid`, also minigrid and pygame-ce into .whl-minigrid/
#   bash benchmarks/fetch_wheels.sh [minigrid]
set -euo pipefail
version() { python3 -m pip show "$1" | sed -n 's/^Version: //p'; }
download() {  # DIR NAME...
    local dir=$1; shift
    for name in "$@"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$dir" "$name==$(version "$name")"
    done
}
download .whl gymnasium farama-notifications popgym hydra-core omegaconf
# antlr4-python3-runtime (hydra's parser) is published as a source archive only: build its wheel here.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
if [ "${1:-}" = minigrid ]; then
    download .whl-minigrid minigrid pygame-ce
fi
ls -la .whl ${1:+.whl-minigrid}
