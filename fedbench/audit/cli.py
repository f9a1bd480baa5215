"""The ``fedbench-audit`` command: ``fedbench``'s Hydra app over ``conf/`` plus ``audit``.

It takes every ``fedbench`` override; the ``audit`` group (``conf/audit/``) is added to the
config (``audit=<option>`` picks another option, ``audit.<key>=...`` sets a key). Bad input ends
the command with one line naming the key, the value and what is allowed, and exit status 2.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedbench.paths import CONF_DIR
from fedbench.errors import ConfigError


def with_audit_group(argv: list[str]) -> list[str]:
    """``argv`` with the audit group added: ``audit=X`` becomes ``+audit=X``; without one,
    ``+audit=default`` is appended."""
    out, chosen = [], False
    for arg in argv:
        if arg.startswith("audit="):
            out.append("+" + arg)
            chosen = True
        else:
            chosen = chosen or arg.startswith("+audit=")
            out.append(arg)
    return out if chosen else out + ["+audit=default"]


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)
    from fedbench.audit.run import run_audit

    out_dir = HydraConfig.get().runtime.output_dir
    print(f"fedbench-audit: writing to {out_dir}", flush=True)
    try:
        result = run_audit(OmegaConf.to_container(cfg, resolve=True), out_dir, progress=True)
    except ConfigError as err:
        print(f"fedbench-audit: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    from fedbench.audit.report import verdict

    print("\n".join(verdict(result)), flush=True)
    print(f"fedbench-audit: report in {out_dir}/audit.html", flush=True)


def main() -> None:
    """Console entry point (``fedbench-audit``)."""
    from fedbench.cli_help import answer
    from fedbench.config_check import check_command_line

    answer(sys.argv[1:], "fedbench-audit",
           "Trains one federation as fedbench would, then attacks it as an adversary would\n"
           "(gradient inversion, membership inference, an empirical epsilon lower bound) and\n"
           "writes audit.html, audit.md and audit.json with a plain-language verdict.",
           ["fedbench-audit                             # digits, 2NN, FedAvg, no DP",
            "fedbench-audit privacy=dp_client dataset.num_clients=100 clients_per_round=50 "
            "rounds=50"],
           extra="The audit group: audit=default, audit.<key>=VALUE (conf/audit/default.yaml).")
    argv = with_audit_group(sys.argv[1:])
    if "-m" in argv or "--multirun" in argv:
        print("fedbench-audit: error: sweeps (-m) are not supported; audit one config at a time",
              file=sys.stderr)
        sys.exit(2)
    try:
        check_command_line(argv, CONF_DIR)
    except ConfigError as err:
        print(f"fedbench-audit: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    _app()


if __name__ == "__main__":
    main()
