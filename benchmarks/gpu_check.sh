#!/usr/bin/env bash
# The GPU check of the scale issue (#14 item 6), ready for the next session that has a GPU:
# one short script (aim: under 8 minutes on one GPU) that runs the device-dependent tests and the
# workloads with client_axis=vmap, and writes benchmarks/results_gpu/. Nothing in fedbench
# requires a GPU; on a CPU-only machine this runs the same steps (slowly) with --quick sizes.
#   bash benchmarks/gpu_check.sh            # after: pip install -e ".[test]" and jax[cuda12]
set -euo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results_gpu
mkdir -p "$out"
python -c "import jax; print(jax.default_backend(), jax.devices())" | tee "$out/devices.txt"
quick=""
if [ "$(python -c 'import jax; print(jax.default_backend())')" = "cpu" ]; then quick="--quick"; fi
# 1. Tests whose code paths differ by backend: vmap client axis, replicas, sharding, determinism.
timeout 240 python -m pytest -q -p no:nbmake -o addopts="" tests/test_simulator.py \
  tests/test_replicas.py tests/test_devices.py tests/test_client_chunk.py \
  tests/test_determinism.py tests/test_flat_storage.py tests/test_distributed.py \
  tests/test_xla_options.py 2>&1 \
  | tail -5 | tee "$out/tests.txt"
# 2. The W1-W5 table with client_axis=vmap (benchmarks/suite.py; W5: flat client storage).
timeout 200 python benchmarks/suite.py $quick --axis vmap --out "$out/suite.json" \
  2>&1 | tail -9 | tee "$out/suite.txt"
# 3. The scale target: 100,000 clients of 60 examples, 10,000 per round, >= 100 rounds/s.
timeout 120 python benchmarks/gpu_scale.py $quick --devices all | tee "$out/gpu_scale.json"
