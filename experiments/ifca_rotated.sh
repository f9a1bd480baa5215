#!/usr/bin/env bash
# IFCA on rotated MNIST (Ghosh et al., NeurIPS 2020, Sec. 5.2 and Table 1) at the largest m x n
# mnist5k allows (issue 29 item 4): IFCA (K = 4) against one global model (FedAvg) and local
# models, p = 4 rotation groups (0, 90, 180, 270 degrees), at the three per-machine sizes of the
# paper's Table 1 (n = 50, 100, 200 training images per machine). Settings from the authors'
# code (github.com/jichan3751/ifca, mnist/config.json and train_cluster_mnist.py): a one-hidden-
# layer MLP of 200 ReLU units, every machine every round, tau = 10 local full-batch gradient steps
# (their batch_size 100 = n), lr 0.1, 300 rounds, an unweighted average per cluster (machines of
# equal size), each machine assigned to the cluster model with the lowest loss on its data.
# Results: results/ifca_rotated/README.md. Run from a clean checkout (the collect script refuses
# runs with uncommitted changes to fedbench/ or conf/), then
#   python experiments/collect_ifca_rotated.py --runs multirun/ifca_rotated --log ifca_rotated.log
# A row whose summary.json says completed is skipped, so the script can be run again after an
# interruption. Run time on a 2-core VM: see results/ifca_rotated/README.md.
set -euo pipefail
set -f  # no globbing of the [200] in the overrides
OUT=${OUT:-multirun/ifca_rotated}
# mnist5k: 5,000 images split IID over m clients, 20% of each client held out as its test split,
# so m = 80 / 40 / 20 gives n = 50-51 / 100 / 200 training images per client (disjoint images;
# the four groups of m/4 clients are rotated). batch_size = the largest client's n: one full
# batch per local step (a larger batch would be right too, but pads every step's product).
COMMON="dataset=mnist5k partition=rotated model=mlp model.hidden=[200] local_steps=10 lr=0.1 rounds=300 eval_every=10 seeds=3 checkpoint_every=0"

source "$(dirname "$0")/study_run.sh"  # run NAME OVERRIDES...

for row in 80:50:51 40:100:100 20:200:200; do  # m : n (its name) : the largest client's n
  IFS=: read -r m n largest <<< "$row"
  M="dataset.num_clients=$m num_clients=$m clients_per_round=$m batch_size=$largest"
  run "n${n}_ifca"   $COMMON $M algorithm=ifca algorithm.clusters=4
  run "n${n}_global" $COMMON $M algorithm=fedavg
  run "n${n}_local"  $COMMON $M algorithm=local
done
