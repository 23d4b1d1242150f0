#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (a Jetson, or a workstation): the gpu-marked tests, then the
# GPU benchmark (benchmarks/gpu.py), in under 10 minutes. Results go to
# benchmarks/results/gpu/<GPU name>/ (gpu.json, gpu.md, and the tests' junit XML).
#
#   benchmarks/gpu.sh                      # tests + benchmark, dtypes from tvm_sparse.compile
#   benchmarks/gpu.sh --dtypes float32     # options go to benchmarks/gpu.py
#   benchmarks/gpu.sh --dry-run            # no GPU: build for a Jetson and assemble only
#
# Needs TVM built with CUDA and, for the PyTorch column, a CUDA build of torch in the same
# environment (JetPack's wheel on a Jetson); without it the benchmark says so and goes on.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

for arg in "$@"; do
    if [[ "$arg" == "--dry-run" ]]; then
        exec python -m benchmarks.gpu "$@"
    fi
done

if ! python -c "import tvm, sys; sys.exit(0 if tvm.cuda(0).exist else 1)" 2>/dev/null; then
    echo "no CUDA GPU visible to TVM (nvidia-smi: $(nvidia-smi -L 2>&1 | head -1));" \
         "run benchmarks/gpu.sh --dry-run to build and assemble without one" >&2
    exit 2
fi
name=$(python -c "import tvm; print(tvm.cuda(0).device_name)")
slug=$(echo "$name" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-//; s/-$//' | tr 'A-Z' 'a-z')
out="benchmarks/results/gpu/${slug}"
mkdir -p "$out"
echo "GPU: $name; results in $out"

start=$(date +%s)
# the gpu-marked tests: every CUDA kernel and pruned model checked against NumPy / PyTorch
timeout 420 python -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$out/gpu-tests.xml"
echo "gpu tests: $(( $(date +%s) - start )) s"
timeout 300 python -m benchmarks.gpu --out "$out" "$@"
echo "total: $(( $(date +%s) - start )) s"
