#!/usr/bin/env bash
# Personalised and clustered FL (issue #12 item 7): what each site gets, not only the average.
#
# (a) rotated digits (Ghosh et al., NeurIPS 2020, rotated MNIST, on scikit-learn's 8x8 digits):
#     partition=rotated, 20 clients in 4 groups of 5 whose images are rotated by 0/90/180/270
#     degrees; 2NN (model=mlp), every client every round (CFL needs all of them), 1 local epoch,
#     batch 10, lr 0.1, 100 rounds. ifca (K = 4) and cfl against fedavg and local.
# (b) Synthetic(0.5, 0.5) with 100 devices (Dinh et al., NeurIPS 2020, pFedMe's setting):
#     partition=natural (each device's 90/10 split), a 2-layer network with 20 hidden units
#     (pFedMe's nonconvex model for Synthetic), 10 devices per round, 20 local steps of batch 20,
#     lr 0.005 for every algorithm (pFedMe's eta), 300 rounds. pfedme (lam 15, K 5, personal lr
#     0.01), finetune (20 steps at evaluation), ditto (lam 0.1), fedrep (head = last layer),
#     apfl (alpha 0.25), perfedavg (first-order and Hessian-free; inner step 0.005, outer
#     step lr 0.001, the pFedMe repository's Per-FedAvg settings for Synthetic; and the
#     first-order one at the study's lr 0.005), against fedavg and local.
#
# Each configuration is one command, seeds=3 (seeds 0, 1, 2 as one compiled program; they share
# the partition of seed 0), e.g.
#
#   fedbench dataset=digits partition=rotated model=mlp num_clients=20 clients_per_round=20 \
#     rounds=100 eval_every=25 seeds=3 checkpoint_every=0 algorithm=ifca \
#     hydra.run.dir=multirun/personalization/rotated/ifca
#   fedbench dataset=synthetic dataset.alpha=0.5 dataset.beta=0.5 dataset.num_clients=100 \
#     num_clients=100 model=mlp 'model.hidden=[20]' local_steps=20 batch_size=20 lr=0.005 \
#     rounds=300 eval_every=50 seeds=3 checkpoint_every=0 algorithm=pfedme \
#     hydra.run.dir=multirun/personalization/synthetic/pfedme
#
# then `python experiments/collect_personalization.py` writes results/personalization/.
# Runs one after another. Measured on 2 CPU cores shared with other jobs (load 4-9), the rerun of
# 2026-12-07 from commit 9e72953: 23 min in all, 8.7 of them synthetic/local (it trains all 100
# devices every round); compile + run seconds per run in results/personalization/README.md.
#
# Usage: experiments/personalization.sh [rotated|synthetic ...]   (no argument: both)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=multirun/personalization
ROTATED=(dataset=digits partition=rotated model=mlp num_clients=20 clients_per_round=20
         local_epochs=1 batch_size=10 lr=0.1 rounds=100 eval_every=25 seeds=3 checkpoint_every=0)
SYNTHETIC=(dataset=synthetic dataset.alpha=0.5 dataset.beta=0.5 dataset.num_clients=100
           num_clients=100 model=mlp 'model.hidden=[20]' clients_per_round=10 local_steps=20
           batch_size=20 lr=0.005 rounds=300 eval_every=50 seeds=3 checkpoint_every=0)

run() {  # run STUDY NAME OVERRIDES...
  local study=$1 name=$2; shift 2
  echo "== $study/$name"
  local start=$SECONDS
  fedbench "$@" hydra.run.dir="$OUT/$study/$name" > /dev/null
  echo "   $((SECONDS - start)) s"
}

studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(rotated synthetic)
for study in "${studies[@]}"; do
  case $study in
    rotated)
      for alg in fedavg local ifca cfl; do run rotated "$alg" "${ROTATED[@]}" algorithm=$alg; done ;;
    synthetic)
      run synthetic fedavg "${SYNTHETIC[@]}" algorithm=fedavg
      run synthetic local "${SYNTHETIC[@]}" algorithm=local
      run synthetic pfedme "${SYNTHETIC[@]}" algorithm=pfedme
      run synthetic finetune "${SYNTHETIC[@]}" algorithm=finetune algorithm.steps=20
      run synthetic ditto "${SYNTHETIC[@]}" algorithm=ditto
      run synthetic fedrep "${SYNTHETIC[@]}" algorithm=fedrep
      run synthetic apfl "${SYNTHETIC[@]}" algorithm=apfl
      # Per-FedAvg at the pFedMe repository's Synthetic settings: inner step alpha 0.005,
      # outer (meta) step beta 0.001 (fedbench's lr)
      run synthetic perfedavg "${SYNTHETIC[@]/#lr=0.005/lr=0.001}" algorithm=perfedavg \
        algorithm.alpha=0.005
      run synthetic perfedavg_hf "${SYNTHETIC[@]/#lr=0.005/lr=0.001}" algorithm=perfedavg \
        algorithm.alpha=0.005 algorithm.variant=hf
      # and at the study's common lr 0.005 as the outer step
      run synthetic perfedavg_lr "${SYNTHETIC[@]}" algorithm=perfedavg algorithm.alpha=0.005 ;;
    *) echo "unknown study: $study (rotated | synthetic)" >&2; exit 2 ;;
  esac
done
