#!/usr/bin/env bash
# q-FFL's fairness against q (issue 33 item 4; Li, Sanjabi, Beirami, Smith, "Fair Resource
# Allocation in Federated Learning", ICLR 2020): q-FedAvg (algorithm=qffl) on Synthetic(1, 1)
# with 100 devices (Li et al.'s generator, the q-FFL repository's Synthetic setting: each device's
# own 90/10 split), multinomial logistic regression, 10 devices a round, 1 local epoch of batch
# 10, lr 0.1 (so the Lipschitz estimate L = 1 / lr = 10), 5,000 rounds, q in {0, 0.1, 1}
# (q = 0: the unweighted mean of the local models) x seeds {0, ..., 9}: one program of 30 replicas
# (sweep.q crossed with seeds; the seeds share the data and differ in initialisation, device
# sampling and minibatches).
# About 60 min on 2 CPU cores (the first version, 3 seeds: 19 min). Run from a clean checkout,
# then
#   python experiments/collect_qffl_fairness.py --log <this script's output>
set -euo pipefail
OUT=${OUT:-multirun/qffl_fairness}

source "$(dirname "$0")/study_run.sh"  # run NAME OVERRIDES...

run sweep algorithm=qffl 'sweep.q=[0,0.1,1]' seeds=10 \
  dataset=synthetic dataset.alpha=1 dataset.beta=1 dataset.num_clients=100 num_clients=100 \
  partition=natural model=logreg clients_per_round=10 local_epochs=1 batch_size=10 lr=0.1 \
  rounds=5000 eval_every=1000 checkpoint_every=0
