#!/usr/bin/env bash
# Site contributions (issue #17 item 3): exact Shapley values and leave-one-out drops of
# Fed-TCGA-BRCA's 6 regions (FLamby's FedAvg schedule) and of the 4-site digits hospital scenario
# of experiments/fl_vs_local.sh. Writes results/contribution/<name>/contribution.json, then
# (experiments/collect_contribution.py) results/contribution/contribution.csv, contribution.png
# and the README's numbers.
# About 3 min on 2 CPU cores. `fedbench-contribution` is `python -m fedbench.contribution_cli`.
set -euo pipefail
OUT=${OUT:-results/contribution}
CONTRIB="python -m fedbench.contribution_cli"

# 6 regions, 2^6 = 64 coalitions x 3 training seeds, C-index of the pooled test set
$CONTRIB --out $OUT/tcga_brca --method exact --seeds 3 dataset=tcga_brca

# One large site (900 digits); a site with 25% zeros and a contrast-shifted scanner; a small site
# with additive scanner noise; a small site with almost no zeros. 16 coalitions x 3 seeds.
$CONTRIB --out $OUT/digits_scenario --method exact --seeds 3 partition=prevalence \
  num_clients=4 clients_per_round=4 rounds=50 eval_every=50 partition.seed=0 \
  'partition.sites=[{size:900},{size:250,classes:{0:0.25},shift:{kind:contrast,value:1.6}},{size:150,shift:{kind:noise,value:0.8}},{size:80,classes:{0:0.02}}]'

python experiments/collect_contribution.py --out "$OUT"
