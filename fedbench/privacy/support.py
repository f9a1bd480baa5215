"""Which algorithm runs under which privacy mechanism: the table in ``docs/privacy.md``.

Generated from the registries (every algorithm of :data:`fedbench.algorithm.BUILDERS`, every
mechanism of :func:`fedbench.privacy.mechanism.registry`), so a new algorithm or mechanism
joins it by registering. Each cell is the run's own config check
(:func:`fedbench.checked.check_config` on the default config with ``algorithm=<name>`` and
``privacy=<mechanism>``, each group's defaults as its config file sets them): ``runs``, or
refused with the reason the check gives (the same words a user sees). Refusals that depend on
the model (BatchNorm under ``dp_sample``) are checked when the model is built, not here; the
equivalence matrix (``tests/test_combinations.py``) runs every cell that is not refused.

    python -m fedbench.privacy.support      # prints the Markdown table and its reasons
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from fedbench.errors import ConfigError

#: Settings without which an algorithm's default config cannot run at all (not privacy).
NEEDS = {"fedbn": {"model": {"norm": "layer"}}, "silobn": {"model": {"norm": "batch"}},
         "ifca": {"algorithm": {"clusters": 2}}}


@functools.cache
def _base() -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config")
    return OmegaConf.to_container(cfg, resolve=True)


def _group(group: str, name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from fedbench.paths import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), resolve=True)


def cell(algorithm: str, mechanism: str) -> str | None:
    """None when ``algorithm`` runs under ``mechanism``, else the check's reason."""
    from fedbench.checked import check_config

    cfg = copy.deepcopy(_base())
    cfg["algorithm"] = _group("algorithm", algorithm)
    cfg["privacy"] = _group("privacy", mechanism)
    for group, settings in NEEDS.get(algorithm, {}).items():
        cfg[group].update(settings)
    try:
        check_config(cfg)
    except ConfigError as err:
        # One reason for every mechanism that refuses for it: the mechanism is the column.
        allowed = err.allowed.replace(f" with privacy={mechanism}", " under this mechanism")
        return f"`{err.key}`: {allowed}"
    return None


def table() -> tuple[list[str], list[tuple[str, list[str | None]]]]:
    """``(mechanisms, [(algorithm, [cell per mechanism])])`` in registry order."""
    from fedbench.algorithm import BUILDERS
    from fedbench.privacy.mechanism import registry

    mechanisms = sorted(registry())
    return mechanisms, [(a, [cell(a, m) for m in mechanisms]) for a in BUILDERS]


def markdown() -> str:
    """The table with numbered reasons under it."""
    mechanisms, rows = table()
    reasons: list[str] = []
    lines = ["| algorithm | " + " | ".join(f"`{m}`" for m in mechanisms) + " |",
             "|---|" + "---|" * len(mechanisms)]
    for algorithm, cells in rows:
        shown = []
        for reason in cells:
            if reason is None:
                shown.append("runs")
                continue
            if reason not in reasons:
                reasons.append(reason)
            shown.append(f"refused ({reasons.index(reason) + 1})")
        lines.append(f"| `{algorithm}` | " + " | ".join(shown) + " |")
    lines.append("")
    lines += [f"{i}. {reason}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
