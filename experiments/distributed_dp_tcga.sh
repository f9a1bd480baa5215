#!/usr/bin/env bash
# Distributed DP against central DP on Fed-TCGA-BRCA (issue 32 item 4, the hospital arm of
# results/distributed_dp/): FLamby's setting (experiments/tcga_brca.yaml: linear Cox model,
# 6 regions, every region in every round, 5 rounds of 100 local steps of batch 8, FedAvg's lr),
# clip 1 (not tuned), delta 1e-5, RDP accounting, 20 seeds per line (one in-program sweep; the
# seeds share FLamby's fixed split and differ in initialisation and minibatches):
#   central:  privacy=dp_client (the server adds Gaussian noise to the clipped sum; q = 1);
#   ddg_<b>:  privacy=ddp privacy.distribution=dgauss privacy.bits=<b> (SecAgg's bytes counted);
#   sk_<b>:   privacy=ddp privacy.distribution=skellam privacy.bits=<b>;
#   nodp:     no DP (the ceiling).
# at target epsilon 4 and 16, bits 8, 10, 12, 14, 16, 20. Site-level DP among 6 hospitals needs
# a large noise multiplier for the mean, hence the epsilons larger than the Synthetic arm's.
# About 10 min on 2 CPU cores. Run from a clean checkout, then
#   python experiments/collect_distributed_dp_tcga.py --runs multirun/distributed_dp_tcga --log LOG
set -euo pipefail
OUT=${OUT:-multirun/distributed_dp_tcga}
C="--config-dir experiments --config-name tcga_brca +seeds=20"

source "$(dirname "$0")/study_run.sh"  # run NAME OVERRIDES...

run nodp $C
for eps in 4 16; do
  run "eps$eps/central" $C privacy=dp_client privacy.clip=1 privacy.accountant=rdp \
    privacy.target_epsilon=$eps
  for bits in 8 10 12 14 16 20; do
    run "eps$eps/ddg_$bits" $C privacy=ddp privacy.clip=1 privacy.distribution=dgauss \
      privacy.bits=$bits privacy.target_epsilon=$eps
    run "eps$eps/sk_$bits" $C privacy=ddp privacy.clip=1 privacy.distribution=skellam \
      privacy.bits=$bits privacy.target_epsilon=$eps
  done
done
