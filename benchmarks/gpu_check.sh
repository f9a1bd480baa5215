#!/usr/bin/env bash
# The GPU check of the scale issue (#14 item 6), ready for the next session that has a GPU:
# one short script (aim: under 8 minutes on one GPU) that runs the device-dependent tests and the
# workloads with client_axis=vmap, and writes benchmarks/results_gpu/. Nothing in fedbench
# requires a GPU; on a CPU-only machine this runs the same steps (slowly) with --quick sizes.
#   bash benchmarks/gpu_check.sh            # after: pip install -e ".[test]" and jax[cuda12]
#   bash benchmarks/gpu_check.sh --dry      # CPU dry run (tests/test_gpu_check.py): every step
#                                           # at its smallest (tests collected, not run; W1 only)
# GPU_CHECK_OUT=<dir> writes the results elsewhere (default benchmarks/results_gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
dry=""
if [ "${1:-}" = "--dry" ]; then dry=1; fi
out="${GPU_CHECK_OUT:-benchmarks/results_gpu}"
mkdir -p "$out"
python -c "import jax; print(jax.default_backend(), jax.devices())" | tee "$out/devices.txt"
quick=""
if [ "$(python -c 'import jax; print(jax.default_backend())')" = "cpu" ] || [ -n "$dry" ]; then
  quick="--quick"
fi
collect=""
workloads="W1,W2,W3,W4,W5"
if [ -n "$dry" ]; then collect="--collect-only"; workloads="W1"; fi
# 1. Tests whose code paths differ by backend: vmap client axis, replicas, sharding, determinism.
timeout 240 python -m pytest -q -p no:nbmake -o addopts="" $collect tests/test_simulator.py \
  tests/test_replicas.py tests/test_devices.py tests/test_client_chunk.py \
  tests/test_determinism.py tests/test_flat_storage.py tests/test_distributed.py \
  tests/test_xla_options.py 2>&1 \
  | tail -5 | tee "$out/tests.txt"
# 2. The W1-W5 table with client_axis=vmap (benchmarks/suite.py; W5: flat client storage).
timeout 200 python benchmarks/suite.py $quick --workloads "$workloads" --axis vmap \
  --out "$out/suite.json" \
  2>&1 | tail -9 | tee "$out/suite.txt"
# 3. The scale target: 100,000 clients of 60 examples, 10,000 per round, >= 100 rounds/s.
timeout 120 python benchmarks/gpu_scale.py $quick --devices all | tee "$out/gpu_scale.json"
