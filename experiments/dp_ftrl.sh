#!/usr/bin/env bash
# DP-FTRL without sampling against DP-FedAvg (issue 31 item 3): client-level (site-level) DP in
# two cross-silo federations where every site takes part in every round, so no amplification by
# sampling applies, plus the cyclic regime the matrix-factorisation papers study.
#   tcga:    Fed-TCGA-BRCA (FLamby, 6 regions, linear Cox model, C-index on the pooled test set),
#            20 rounds of 25 local steps (FLamby's 500 local updates in all: 5 x 100), client lr
#            0.1, batch 8, clip 0.1.
#   digits:  a 20-hospital scenario on digits (partition=prevalence: 5 site sizes 150, 100, 80,
#            60, 40 repeated 4 times, class mixes as in the whole dataset), multinomial logistic
#            regression, 50 rounds of 1 local epoch (batch 10, client lr 0.1), clip 0.1.
#   cyclic:  the digits federation in 5 fixed groups of 4 sites (site i in group i mod 5, round t
#            is group t mod 5's), so each site takes part in 10 of the 50 rounds, 5 rounds apart.
# Mechanisms, each at target epsilon 1, 2, 4, 8 (delta = min(1e-5, n^-1.1), PLD accountant) x 5
# seeds, as one in-program sweep per line:
#   ftrl_blt, ftrl_banded (4 bands; 5 = cycle under cyclic), ftrl_dense: privacy=dp_ftrl;
#   fedavg_q1: DP-FedAvg (privacy=dp_client), every site every round (Poisson with q = 1), its
#     sweep also runs epsilon = inf (clipped, no noise: the ceiling);
#   ftrl_independent (cyclic only): 1 band, C = I: independent noise on each group's sum, no
#     sampling (for every-round participation that is fedavg_q1); its sweep also runs inf;
#   fedavg_sampled: DP-FedAvg with Poisson sampling, q = 0.5 (tcga, digits) or 0.2 (cyclic: the
#     same 4 expected sites per round as a group).
# The clips were chosen once, by hand, on DP-FedAvg q = 1 at epsilon 4 over {0.03, 0.1, 0.3}
# (tcga) and {0.1, 0.3, 1} (digits) with seeds 0-2; that choice is not accounted (README).
# About 6 min on 2 CPU cores. Run from a clean checkout, then
#   python experiments/collect_dp_ftrl.py --runs multirun/dp_ftrl
set -euo pipefail
set -f  # no globbing of the brackets in the overrides
OUT=${OUT:-multirun/dp_ftrl}
EPS='sweep.target_epsilon=[1,2,4,8]'
SITES='partition.sites=[{size:150},{size:100},{size:80},{size:60},{size:40},{size:150},{size:100},{size:80},{size:60},{size:40},{size:150},{size:100},{size:80},{size:60},{size:40},{size:150},{size:100},{size:80},{size:60},{size:40}]'
TCGA="dataset=tcga_brca rounds=20 local_steps=25 eval_every=20 privacy.clip=0.1 seeds=5 checkpoint_every=0"
DIGITS="dataset=digits partition=prevalence $SITES num_clients=20 model=logreg rounds=50 local_epochs=1 batch_size=10 lr=0.1 eval_every=50 privacy.clip=0.1 seeds=5 checkpoint_every=0"

source "$(dirname "$0")/study_run.sh"  # run NAME OVERRIDES...

for fed in tcga digits cyclic; do
  case $fed in
    tcga)   C=$TCGA;   ALL=clients_per_round=6;  SAMPLED=clients_per_round=3;  BANDS=4; FTRL="" ;;
    digits) C=$DIGITS; ALL=clients_per_round=20; SAMPLED=clients_per_round=10; BANDS=4; FTRL="" ;;
    cyclic) C=$DIGITS; ALL=clients_per_round=4;  SAMPLED=clients_per_round=4;  BANDS=5
            FTRL="privacy.participation=cyclic privacy.cycle=5" ;;
  esac
  run "$fed/ftrl_blt"    $C $ALL privacy=dp_ftrl privacy.matrix=blt $FTRL "$EPS"
  run "$fed/ftrl_banded" $C $ALL privacy=dp_ftrl privacy.matrix=banded privacy.bands=$BANDS $FTRL "$EPS"
  run "$fed/ftrl_dense"  $C $ALL privacy=dp_ftrl privacy.matrix=dense $FTRL "$EPS"
  if [ "$fed" != cyclic ]; then
    run "$fed/fedavg_q1" $C $ALL privacy=dp_client 'sweep.target_epsilon=[1,2,4,8,inf]'
  else  # independent noise, no sampling: the groups' cyclic DP-FedAvg (C = I, 1 band)
    run "$fed/ftrl_independent" $C $ALL privacy=dp_ftrl privacy.matrix=banded privacy.bands=1 \
      $FTRL 'sweep.target_epsilon=[1,2,4,8,inf]'
  fi
  run "$fed/fedavg_sampled" $C $SAMPLED privacy=dp_client "$EPS"
done
