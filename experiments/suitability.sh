#!/usr/bin/env bash
# FL suitability reports (issue #17 item 3) for two contrasting 8-site digits federations:
#   balanced: 8 equal IID sites, all on fibre;
#   dominant: one 900-example hospital on hospital DSL and 7 sites of 100 on rural 4G.
# Same schedule (FedAvg, 2NN, 50 rounds, all 8 sites every round), the regulator's epsilon 8
# (client-level), a 24 h limit and a 0.05 accuracy loss the sites accept.
# Writes results/suitability/<name>/suitability.{md,html,json,png}, then re-renders
# results/suitability/README.md (experiments/collect_suitability.py); about 8 min on 2 CPU cores.
# `fedbench-suitability` is `python -m fedbench.suitability`.
set -euo pipefail
OUT=${OUT:-results/suitability}
SUIT="python -m fedbench.suitability"
COMMON=(num_clients=8 clients_per_round=8 rounds=50 eval_every=5 links=profiles
        suitability.epsilon=8 suitability.max_cost=0.05 suitability.max_hours=24
        'suitability.audit={trials:2,iterations:200}' suitability.contribution.method=exact)

$SUIT --out $OUT/balanced "${COMMON[@]}" partition=iid links.profile=fibre

$SUIT --out $OUT/dominant "${COMMON[@]}" partition=prevalence \
  'partition.sites=[{size:900},{size:100},{size:100},{size:100},{size:100},{size:100},{size:100},{size:100}]' \
  'links.sites=[hospital_dsl,rural_4g,rural_4g,rural_4g,rural_4g,rural_4g,rural_4g,rural_4g]'

# the run directories' checkpoints are not needed for the reports (metrics.jsonl, summary.json)
find $OUT -name checkpoints -type d -prune -exec rm -rf {} +

# the README's tables and numbers, from the two suitability.json (and dp/summary.json)
python experiments/collect_suitability.py --out $OUT
