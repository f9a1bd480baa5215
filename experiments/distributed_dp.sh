#!/usr/bin/env bash
# Distributed DP against central DP (issue 32 item 4): accuracy against the bits per coordinate
# of the secure sum at a fixed epsilon. Synthetic-IID (Li et al. 2020) over 1,000 clients of 50
# examples, logistic regression (610 parameters, padded to 1,024 for the rotation), every client
# in every round (clients_per_round = 1,000: privacy=ddp's setting), 50 rounds of 2 local epochs
# (batch 10, client lr 0.5), clip 2, delta 1e-5, RDP accounting, 3 seeds per line (one
# in-program sweep):
#   central:  privacy=dp_client, every client every round (Poisson with q = 1): the server adds
#             Gaussian noise to the clipped sum (the trusted-server baseline);
#   ddg_<b>:  privacy=ddp privacy.distribution=dgauss privacy.bits=<b> (SecAgg's bytes counted);
#   sk_<b>:   privacy=ddp privacy.distribution=skellam privacy.bits=<b>;
#   nodp:     no DP (the ceiling), clipped nowhere.
# at target epsilon 1 and 4, bits 8, 10, 12, 14, 16, 20.
# About 16 min on 2 CPU cores. Run from a clean checkout, then
#   python experiments/collect_distributed_dp.py --runs multirun/distributed_dp
set -euo pipefail
OUT=${OUT:-multirun/distributed_dp}
C="dataset=synthetic dataset.iid=true dataset.num_clients=1000 dataset.samples_per_client=50 partition=natural model=logreg clients_per_round=1000 rounds=50 local_epochs=2 batch_size=10 lr=0.5 eval_every=50 seeds=3 checkpoint_every=0"

source "$(dirname "$0")/study_run.sh"  # run NAME OVERRIDES...

run nodp $C
for eps in 1 4; do
  run "eps$eps/central" $C privacy=dp_client privacy.clip=2 privacy.accountant=rdp \
    privacy.target_epsilon=$eps
  for bits in 8 10 12 14 16 20; do
    run "eps$eps/ddg_$bits" $C privacy=ddp privacy.clip=2 privacy.distribution=dgauss \
      privacy.bits=$bits privacy.target_epsilon=$eps
    run "eps$eps/sk_$bits" $C privacy=ddp privacy.clip=2 privacy.distribution=skellam \
      privacy.bits=$bits privacy.target_epsilon=$eps
  done
done
