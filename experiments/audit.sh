#!/usr/bin/env bash
# results/audit/ (issue #13 item 5): the privacy audit of a non-private and a client-level DP
# federation on 8x8 digits, then the defence-strength and epsilon figures. The federation: the
# default 2NN and FedAvg over 100 sites of about 14 training images each, 50 sites a round for 50
# rounds (digits' default 20 sites are too few for client-level DP: at epsilon 8 over 100 rounds
# the noise on the mean update makes training diverge). About 8 min on 2 CPU cores. Run from the
# repository root:
#   bash experiments/audit.sh
# Headless Chromium (Debian: `apt-get install -y chromium`) renders each audit.html to audit.png;
# without it the PNG step is skipped and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-outputs/audit}     # run directories (federation checkpoints stay out of git)
OUT=results/audit

FED=(dataset.num_clients=100 clients_per_round=50 rounds=50)

fedbench-audit "${FED[@]}" audit.sites.enabled=true hydra.run.dir="$RUNS/nonprivate"
fedbench-audit "${FED[@]}" privacy=dp_client privacy.target_epsilon=8 hydra.run.dir="$RUNS/dp_client"
fedbench-audit "${FED[@]}" algorithm=ditto hydra.run.dir="$RUNS/ditto"   # personalised models

# The three reports (md, html, json, image grids) into results/audit/<config>/, each html
# rendered to audit.png; the two figures and their numbers (figures.json) into results/audit/.
python experiments/plot_audit.py --runs "$RUNS" --out "$OUT"
