"""``fedbench-contribution``: each site's leave-one-out and Shapley value (fedbench.contribution).

    fedbench-contribution dataset=tcga_brca --method exact --value pooled --seeds 3
    fedbench-contribution --method tmc --permutations 100 --tolerance 0.01   # digits, 20 sites

Takes the same overrides as ``fedbench``; writes ``contribution.json`` into ``--out`` and prints
a table (site, training size, Shapley value, leave-one-out drop).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fedbench.cli_help import version_line
from fedbench.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fedbench-contribution",
        description="Each site's leave-one-out and Shapley value (fedbench.contribution): every "
                    "coalition of sites is trained as a sub-federation and valued on the test data.",
        epilog="example: fedbench-contribution dataset=tcga_brca --method exact --value pooled "
               "--seeds 3")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedbench")
    parser.add_argument("--method", default="auto", choices=["auto", "exact", "tmc", "loo"],
                        help="exact: every coalition (2^n runs); tmc: truncated Monte-Carlo "
                             "Shapley over --permutations orders; loo: leave-one-out only; "
                             "auto: exact up to 10 sites, else tmc (default: auto)")
    parser.add_argument("--value", default="pooled", choices=["pooled", "sites_mean"],
                        help="a coalition's value: accuracy (c-index for survival) on the pooled "
                             "test set, or the mean over the sites' own test sets (default: "
                             "pooled)")
    parser.add_argument("--version", action="version",
                        version=version_line("fedbench-contribution"))
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per coalition")
    parser.add_argument("--permutations", type=int, default=50, help="tmc: orders sampled")
    parser.add_argument("--tolerance", type=float, default=0.0, help="tmc: truncation")
    parser.add_argument("--out", default="outputs/contribution", help="output directory")
    args = parser.parse_args(argv)

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR
    from fedbench.contribution import contribution
    from fedbench.results import write_json

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = OmegaConf.to_container(compose(config_name="config",
                                                 overrides=list(args.overrides)), resolve=True)
        result = contribution(cfg, args.method, args.value, args.seeds, args.permutations,
                              args.tolerance, progress=True)
    except ConfigError as err:
        print(f"fedbench-contribution: config error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    write_json(out / "contribution.json", {**result, "overrides": list(args.overrides)})
    print(f"{'site':>4} {'train':>6} {'shapley':>9} {'loo':>9}")
    for i in range(result["sites"]):
        shap = result.get("shapley", [float("nan")] * result["sites"])[i]
        print(f"{i:>4} {result['train_sizes'][i]:>6} {shap:>9.4f} {result['leave_one_out'][i]:>9.4f}")
    print(f"v(all) = {result['v_all']:.4f}, v(none) = {result['v_empty']:.4f} "
          f"({result['value']}, {result['method']}, {result['coalitions_trained']} coalitions)")
    print(f"fedbench-contribution: wrote {out / 'contribution.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
