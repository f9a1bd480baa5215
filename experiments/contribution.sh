#!/usr/bin/env bash
# Site contributions (issue #17 item 3): exact Shapley values and leave-one-out drops of
# Fed-TCGA-BRCA's 6 regions (FLamby's FedAvg schedule) and of the 4-site digits hospital scenario
# of experiments/fl_vs_local.sh. Writes results/contribution/<name>/contribution.json, then (the
# Python at the end) results/contribution/contribution.csv and contribution.png.
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

python - "$OUT" <<'PY'
import csv, json, sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

out = Path(sys.argv[1])
studies = {"tcga_brca": ["Region 0", "Region 1", "Region 2", "Region 3", "Region 4", "Region 5"],
           "digits_scenario": ["large (900)", "zeros 25%, contrast (250)", "noise (150)",
                               "few zeros (80)"]}
rows = []
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for ax, (name, labels) in zip(axes, studies.items()):
    r = json.loads((out / name / "contribution.json").read_text())
    total = sum(r["train_sizes"])
    for i in range(r["sites"]):
        rows.append({"study": name, "site": i, "label": labels[i], "train_size": r["train_sizes"][i],
                     "train_share": round(r["train_sizes"][i] / total, 4),
                     "shapley": round(r["shapley"][i], 5),
                     "shapley_share": round(r["shapley"][i] / (r["v_all"] - r["v_empty"]), 4),
                     "leave_one_out": round(r["leave_one_out"][i], 5),
                     "v_all": round(r["v_all"], 5), "v_empty": round(r["v_empty"], 5),
                     "value": r["value"], "method": r["method"], "seeds": r["seeds"],
                     "rounds": r["rounds"]})
    x = range(r["sites"])
    ax.bar([i - 0.2 for i in x], r["shapley"], 0.4, label="Shapley")
    ax.bar([i + 0.2 for i in x], r["leave_one_out"], 0.4, label="leave-one-out drop")
    ax2 = ax.twinx()
    ax2.plot(list(x), [s / total for s in r["train_sizes"]], "k.:", label="training share")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share of training data")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(list(x), labels, rotation=20, fontsize=7, ha="right")
    metric = "C-index" if name == "tcga_brca" else "accuracy"
    ax.set_ylabel(f"pooled-test {metric}")
    ax.set_title(f"{name}: v(all) {r['v_all']:.3f}, v(none) {r['v_empty']:.3f}")
    ax.legend(fontsize=7, loc="upper right")
fig.tight_layout()
fig.savefig(out / "contribution.png", dpi=110)
with open(out / "contribution.csv", "w", newline="") as fh:
    w = csv.DictWriter(fh, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
print(f"wrote {out / 'contribution.csv'} and {out / 'contribution.png'}")
PY
