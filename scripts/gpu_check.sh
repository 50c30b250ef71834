#!/usr/bin/env bash
# The GPU path's check, for a machine with a CUDA GPU; `make test` never needs it.
#
#   scripts/gpu_check.sh [OUT.json]        (default: benchmarks/results/gpu_check.json)
#
# 1. the suite's device-sensitive tests (`pytest -m device`: training, resume, torch.compile,
#    sampling and the classifier on CUDA against the CPU), at most 3 minutes;
# 2. benchmarks/gpu_throughput.py on the GPU (training images/s in fp32, bf16, bf16 +
#    channels_last; DDIM-50 seconds), at most 90 s;
# and writes both into one JSON file: well under 5 minutes in all. Set GPU_CHECK_COMPILE=1 to also
# time torch.compile (a minute or more of compilation). Exit status: 0 when the tests passed and
# the benchmark ran, 3 when there is no CUDA GPU, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
OUT="${1:-benchmarks/results/gpu_check.json}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: PyTorch sees no CUDA GPU on this machine; run it on a GPU machine." >&2
    exit 3
fi
REPORT="$(mktemp -d)"
trap 'rm -rf "$REPORT"' EXIT
timeout 180 "$PY" -m pytest -q -m device -p no:cacheprovider --junitxml="$REPORT/tests.xml" tests
TESTS=$?
COMPILE=()
BENCH_LIMIT=90
[ "${GPU_CHECK_COMPILE:-0}" = 1 ] && COMPILE=(--compile) && BENCH_LIMIT=240
timeout "$BENCH_LIMIT" "$PY" benchmarks/gpu_throughput.py --device cuda "${COMPILE[@]}" \
    --junit "$REPORT/tests.xml" --out "$OUT"
BENCH=$?
echo "gpu_check: tests exit $TESTS, benchmark exit $BENCH; report in $OUT"
[ "$TESTS" = 0 ] && [ "$BENCH" = 0 ]
