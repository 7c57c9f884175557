#!/usr/bin/env bash
# The throughput benchmark on a GPU machine that has JAX but not Keras, TensorFlow or a network
# (the device machines these sessions are sometimes lent).
#
#   bash benchmarks/gpu.sh wheels
#       Here, with the package registry: download the wheels featx needs that the GPU image
#       lacks (Python 3.12, manylinux x86-64) into .whl/ (in .gitignore).
#   bash benchmarks/gpu.sh run BACKBONES [benchmarks.run options]
#       There, with .whl carried along: install them into /tmp/site and run the throughput table
#       under KERAS_BACKEND=jax in float32 and mixed_float16, batch 128. The table is printed and
#       written to benchmarks/results/latest-jax.md (and copied to $OUT when that is set).
#       One backbone per call keeps a call under 10 minutes (each method compiles in a fresh
#       process). The Keras pipeline needs tf.data, so it is reported as skipped there.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

case "${1:-}" in
wheels)
    mkdir -p .whl
    # keras and skops are pure Python; optree is compiled. The image has the rest (numpy, h5py,
    # scikit-learn, pillow, tqdm, matplotlib, rich, ml-dtypes, absl-py, packaging, scipy).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl keras namex optree skops prettytable wcwidth
    ls .whl
    ;;
run)
    shift
    backbones=${1:?name the backbones, e.g. mobilenet}
    shift
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site:$PWD
    fi
    export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 -m benchmarks.run --backbones "$backbones" --skip memory,grid \
        --precisions float32,mixed_float16 --batch-size 128 --work /tmp/featx-bench "$@"
    if [ -n "${OUT:-}" ]; then cp benchmarks/results/latest-jax*.md "$OUT"/; fi
    ;;
*)
    sed -n '2,14p' "$0"
    exit 2
    ;;
esac
