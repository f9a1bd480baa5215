#!/usr/bin/env bash
# Federated vs local vs pooled (the FeTS question, Pati et al. 2022) on four federations, 5 seeds.
# Each line is one fedbench-compare command; results go to multirun/fl_vs_local/<study>/ and
# experiments/collect_fl_vs_local.py turns them into results/fl_vs_local/. About 10 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=0,1,2,3,4
OUT=multirun/fl_vs_local

# Fed-TCGA-BRCA, FLamby's schedule (batch 8, 100 local updates, 5 rounds), standardised features.
fedbench-compare --seeds $SEEDS --out $OUT/tcga_brca dataset=tcga_brca partition=natural \
  model=cox clients_per_round=6 batch_size=8 local_steps=100 rounds=5 eval_every=5 lr=0.1

# OPT (4 clinics) and indo_rct (4 hospitals, one with 3 patients): logistic regression, ROC AUC.
for ds in opt indo_rct; do
  fedbench-compare --seeds $SEEDS --metric auc --out $OUT/$ds dataset=$ds partition=natural \
    model=logreg clients_per_round=4 batch_size=10 local_epochs=1 rounds=50 eval_every=50 lr=0.05
done

# Digits hospital scenario: one large site; a site with 25% zeros and a contrast-shifted scanner;
# a small site with additive scanner noise; a small site with almost no zeros.
fedbench-compare --seeds $SEEDS --out $OUT/digits_scenario partition=prevalence num_clients=4 \
  clients_per_round=4 rounds=50 eval_every=50 \
  'partition.sites=[{size:900},{size:250,classes:{0:0.25},shift:{kind:contrast,value:1.6}},{size:150,shift:{kind:noise,value:0.8}},{size:80,classes:{0:0.02}}]'
