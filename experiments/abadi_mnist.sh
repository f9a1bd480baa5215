#!/usr/bin/env bash
# Abadi et al. 2016's MNIST privacy-utility points (CCS 2016, Sec. 5.2) as far as mnist5k allows
# (issue #29 item 4): centralised record-level DP-SGD as one site holding all 4,000 training
# images (dataset.num_clients=1, clients_per_round=1, FedAvg over one client = plain DP-SGD),
# the paper's sampling rate q = 0.01 (lots of 40 here, 600 in the paper), clip C = 4, one hidden
# layer of 1,000 ReLU units (no PCA: fedbench has none), and the paper's three noise levels
# sigma = 8, 4, 2 (epsilon 0.5, 2, 8 at delta 1e-5 in the paper), 3 seeds each, plus a
# non-private run (plain SGD, privacy=none) with the same model, lot and lr.
#
# Epochs: the number of epochs (100 DP-SGD steps each at q = 0.01) at which fedbench's PLD
# accountant (dp-accounting) reaches the paper's epsilon at the paper's sigma is computed by
# experiments/collect_abadi_mnist.py (accounting.csv): 127, 388 and 973 epochs for sigma 8, 4, 2.
# That full schedule is FULL=1 below. It was NOT run: on the 2-core CPU this study ran on (shared
# with other jobs) one epoch of one seed of DP-SGD took about 36-42 s (the per-example gradients
# of the 784,000-weight first layer, in a Poisson buffer of about 95 slots for lots of mean 40),
# so the full schedule, 3 x (127 + 388 + 973) epochs, would take about 2 days. What ran (the
# default) is every setting truncated to EPOCHS epochs, with epsilon and test accuracy after
# every epoch.
#
# Each configuration is one command from the repository root (the common settings are $COMMON):
#
#   fedbench $COMMON hydra.run.dir=multirun/abadi_mnist/nonprivate privacy=none rounds=$EPOCHS eval_every=1
#   fedbench $COMMON hydra.run.dir=multirun/abadi_mnist/nonprivate_long privacy=none rounds=100 eval_every=10
#   fedbench $COMMON hydra.run.dir=multirun/abadi_mnist/sigma8 privacy=dp_sample \
#     privacy.noise_multiplier=8 privacy.target_epsilon=null privacy.clip=4 privacy.delta=1e-5 \
#     rounds=$EPOCHS eval_every=1
#   (sigma4, sigma2 likewise; one round = one local epoch of the single client = 100 steps)
# The learning-rate pilot (sigma = 4, seed 0, 2 epochs; lr 0.1 also 4 epochs) that chose LR:
#
#   fedbench $COMMON_PILOT hydra.run.dir=multirun/abadi_mnist/pilot_timing lr=0.1 rounds=4 eval_every=2
#   fedbench $COMMON_PILOT hydra.run.dir=multirun/abadi_mnist/pilot_lr 'sweep.lr=[0.01,0.03]' rounds=2 eval_every=1
#   fedbench $COMMON_PILOT hydra.run.dir=multirun/abadi_mnist/pilot_lr_low lr=0.003 rounds=2 eval_every=1
#
# then `python experiments/collect_abadi_mnist.py --sweep multirun/abadi_mnist` writes
# results/abadi_mnist/ (CSVs, PNG, README numbers).
#
# Usage: experiments/abadi_mnist.sh [NAME ...]   (names: pilot nonprivate sigma2 sigma4 sigma8
#        nonprivate_long; none: all but the pilot). FULL=1: the paper's epochs per sigma (not run
#        here). RUN_ROOT=/path/to/checkout runs there (this study: a clean worktree of 9e72953).
set -euo pipefail
# RUN_ROOT: the checkout to run in (default: this one), e.g. a clean worktree of one commit.
cd "${RUN_ROOT:-$(dirname "$0")/..}"
OUT=${OUT:-multirun/abadi_mnist}
EPOCHS=${EPOCHS:-3}
LR=${LR:-0.01}
BASE=(dataset=mnist5k dataset.num_clients=1 partition=iid model=mlp 'model.hidden=[1000]'
      algorithm=fedavg clients_per_round=1 local_epochs=1 batch_size=40 checkpoint_every=0)
COMMON=("${BASE[@]}" lr=$LR seeds=3)
DP=(privacy=dp_sample privacy.target_epsilon=null privacy.clip=4 privacy.delta=1e-5)
COMMON_PILOT=("${BASE[@]}" seeds=1 "${DP[@]}" privacy.noise_multiplier=4)

declare -A SIGMA=([sigma8]=8 [sigma4]=4 [sigma2]=2)
declare -A FULL_EPOCHS=([nonprivate]=973 [sigma8]=127 [sigma4]=388 [sigma2]=973)

epochs() {  # the epochs a configuration runs
  if [ "${FULL:-0}" = 1 ]; then echo "${FULL_EPOCHS[$1]}"; else echo "$EPOCHS"; fi
}

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(nonprivate sigma2 sigma4 sigma8 nonprivate_long)
for name in "${names[@]}"; do
  start=$SECONDS
  case $name in
    pilot)
      fedbench "${COMMON_PILOT[@]}" hydra.run.dir=$OUT/pilot_timing lr=0.1 rounds=4 eval_every=2
      fedbench "${COMMON_PILOT[@]}" hydra.run.dir=$OUT/pilot_lr 'sweep.lr=[0.01,0.03]' rounds=2 \
        eval_every=1
      fedbench "${COMMON_PILOT[@]}" hydra.run.dir=$OUT/pilot_lr_low lr=0.003 rounds=2 eval_every=1 ;;
    nonprivate)
      fedbench "${COMMON[@]}" hydra.run.dir=$OUT/nonprivate privacy=none rounds=$(epochs $name) \
        eval_every=1 ;;
    nonprivate_long)  # what the model reaches without privacy (cheap: no per-example gradients)
      fedbench "${COMMON[@]}" hydra.run.dir=$OUT/nonprivate_long privacy=none rounds=100 \
        eval_every=10 ;;
    sigma8|sigma4|sigma2)
      fedbench "${COMMON[@]}" hydra.run.dir=$OUT/$name "${DP[@]}" \
        privacy.noise_multiplier=${SIGMA[$name]} rounds=$(epochs $name) eval_every=1 ;;
    *) echo "unknown configuration: $name" >&2; exit 2 ;;
  esac
  echo "== $name: $((SECONDS - start)) s"
done
