#!/usr/bin/env bash
# Uplink compression on real MNIST (issue #11 item 6): accuracy against uplink bytes and against
# simulated seconds on mixed hospital links. 11 configurations x 3 seeds, 200 rounds each.
#
# Setup (every run): dataset=mnist5k (offline, 5,000 MNIST images, 50 clients, 20% of each held
# out), Dirichlet label skew with the default alpha 0.5 (partition=dirichlet), McMahan et al.'s
# 2NN (model=mlp, 199,210 parameters), FedAvg, 10 clients per round, 1 local epoch, batch 10,
# lr 0.1, 200 rounds, evaluation every 10, links=profiles (35 sites on hospital_dsl 20/5 Mbit/s,
# 15 on rural_4g 10/2 Mbit/s, 0.01 s per local step), seeds=3 (seeds 0, 1, 2 as one compiled
# program; they share the partition of seed 0 and the sites' links), no checkpoints.
#
# Each configuration runs as one command (the common settings are $COMMON below):
#
#   fedbench $COMMON hydra.run.dir=multirun/compression/dense          compression=none
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_10pct     compression=topk compression.fraction=0.1
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_10pct_ef  compression=topk compression.fraction=0.1 compression.error_feedback=true
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_1pct      compression=topk compression.fraction=0.01
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_1pct_ef   compression=topk compression.fraction=0.01 compression.error_feedback=true
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_0.1pct    compression=topk compression.fraction=0.001
#   fedbench $COMMON hydra.run.dir=multirun/compression/topk_0.1pct_ef compression=topk compression.fraction=0.001 compression.error_feedback=true
#   fedbench $COMMON hydra.run.dir=multirun/compression/quantize_8bit  compression=quantize compression.bits=8
#   fedbench $COMMON hydra.run.dir=multirun/compression/quantize_2bit  compression=quantize compression.bits=2
#   fedbench $COMMON hydra.run.dir=multirun/compression/qsgd           compression=qsgd
#   fedbench $COMMON hydra.run.dir=multirun/compression/ef_signsgd     compression=signsgd compression.error_feedback=true
#
# then `python experiments/collect_compression.py` writes results/compression/ (CSV and PNG).
#
# Runtime: about 15 min for all 11, run one after another on a 2-core CPU shared with other work
# (in parallel they would only compete for the two cores); 27-138 s per configuration in the
# rerun of 2026-12-07, varying with the load. Each configuration's time is the "== name: N s"
# line printed below: keep the output (`experiments/compression.sh 2>&1 | tee compression.log`)
# and pass it to `collect_compression.py --log compression.log`, which writes the times into
# results/compression/run_times.csv (the README's run-time table is rendered from it).
#
# Usage: experiments/compression.sh [NAME ...]   (no names: all 11; names as in the list above)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=multirun/compression
COMMON=(dataset=mnist5k partition=dirichlet model=mlp algorithm=fedavg clients_per_round=10
        local_epochs=1 batch_size=10 lr=0.1 rounds=200 eval_every=10 links=profiles seeds=3
        checkpoint_every=0)

declare -A CONFIGS=(
  [dense]="compression=none"
  [topk_10pct]="compression=topk compression.fraction=0.1"
  [topk_10pct_ef]="compression=topk compression.fraction=0.1 compression.error_feedback=true"
  [topk_1pct]="compression=topk compression.fraction=0.01"
  [topk_1pct_ef]="compression=topk compression.fraction=0.01 compression.error_feedback=true"
  [topk_0.1pct]="compression=topk compression.fraction=0.001"
  [topk_0.1pct_ef]="compression=topk compression.fraction=0.001 compression.error_feedback=true"
  [quantize_8bit]="compression=quantize compression.bits=8"
  [quantize_2bit]="compression=quantize compression.bits=2"
  [qsgd]="compression=qsgd"
  [ef_signsgd]="compression=signsgd compression.error_feedback=true"
)
ORDER=(dense topk_10pct topk_10pct_ef topk_1pct topk_1pct_ef topk_0.1pct topk_0.1pct_ef
       quantize_8bit quantize_2bit qsgd ef_signsgd)

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
  if [ -z "${CONFIGS[$name]+x}" ]; then
    echo "compression.sh: unknown configuration '$name'; one of: ${ORDER[*]}" >&2
    exit 2
  fi
done

for name in "${names[@]}"; do
  echo "== $name: fedbench ${COMMON[*]} hydra.run.dir=$OUT/$name ${CONFIGS[$name]}"
  start=$SECONDS
  # shellcheck disable=SC2086  # the configuration's overrides are split into words on purpose
  fedbench "${COMMON[@]}" "hydra.run.dir=$OUT/$name" ${CONFIGS[$name]}
  echo "== $name: $((SECONDS - start)) s"
done
