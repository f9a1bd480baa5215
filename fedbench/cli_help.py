"""``--help`` and ``--version`` of the Hydra commands (``fedbench``, ``fedbench-audit``).

Hydra's own help starts "cli is powered by Hydra" and its ``--version`` prints Hydra's version;
these commands answer both themselves, before Hydra starts: the help lists what to type (the
config groups and their options, read from ``conf/``, the common keys and examples); Hydra's
help stays at ``--hydra-help``.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Sequence
from importlib import metadata

from fedbench.paths import CONF_DIR


def version_line(prog: str) -> str:
    """``<prog> <fedbench version> (jax ..., jaxlib ..., hydra-core ..., Python ...)``."""
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        own = metadata.version("fedbench")
    except metadata.PackageNotFoundError:
        from fedbench import __version__ as own
    parts = ", ".join(f"{d} {version(d)}" for d in ("jax", "jaxlib", "hydra-core"))
    python = ".".join(map(str, sys.version_info[:3]))
    return f"{prog} {own} ({parts}, Python {python})"


#: Groups of ``conf/`` that belong to one command only (added to the config by that command).
OWN_GROUPS = {"audit": "fedbench-audit", "suitability": "fedbench-suitability"}


def groups(prog: str = "fedbench") -> dict[str, list[str]]:
    """The config groups ``prog`` takes and their options (file names), sorted."""
    return {d.name: sorted(p.stem for p in d.glob("*.yaml"))
            for d in sorted(CONF_DIR.iterdir())
            if d.is_dir() and d.name != "hydra" and OWN_GROUPS.get(d.name, prog) == prog}


def help_text(prog: str, what: str, examples: Sequence[str], extra: str = "") -> str:
    """The help of a Hydra command: usage, what it does, the groups and options, the common
    keys, examples, where to read more."""
    lines = [f"usage: {prog} [KEY=VALUE ...] [GROUP=OPTION ...] [-m]", "", what, "",
             "Config groups (GROUP=OPTION; then GROUP.KEY=VALUE sets one of its keys):"]
    for group, options in groups(prog).items():
        lines += textwrap.wrap(", ".join(options), 96, initial_indent=f"  {group:<12} ",
                               subsequent_indent=" " * 15)
    lines += ["", "Common keys: rounds, num_clients, clients_per_round, local_epochs, batch_size,",
              "  lr, seed, seeds, eval_every, sweep.<key>=[...], members=[...], client_axis",
              "  (defaults and comments: conf/config.yaml and conf/<group>/<option>.yaml)"]
    if extra:
        lines += ["", extra]
    lines += ["", "Examples:"] + [f"  {e}" for e in examples]
    lines += ["", "Options:", "  -h, --help      this help", "  -V, --version   versions",
              "  -m, --multirun  a sweep: comma-separated values run as separate jobs",
              "  --cfg job       print the composed config and exit",
              "  --hydra-help    Hydra's own help", "",
              "Documentation: README.md and the pages in docs/ (mkdocs serve: a local site)."]
    return "\n".join(lines)


def answer(argv: Sequence[str], prog: str, what: str, examples: Sequence[str],
           extra: str = "") -> None:
    """Prints the help or the version and exits 0 if ``argv`` asks for one; else returns."""
    if any(a in ("-V", "--version") for a in argv):
        print(version_line(prog))
        sys.exit(0)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text(prog, what, examples, extra))
        sys.exit(0)
