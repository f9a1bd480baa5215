"""Where fedbench's own files are: the Hydra config groups (``conf/``).

A module of its own, imported by every piece that reads a config file (the algorithm and
compression defaults, the commands), so none of them imports the ``fedbench`` command.
"""

from __future__ import annotations

from pathlib import Path


def _conf_dir() -> Path:
    """Hydra's config groups: ``fedbench/conf`` in an installed wheel, else the checkout's ``conf/``.

    ``conf/`` lives at the top of the repository and is packaged as ``fedbench.conf``
    (``pyproject.toml``), so a wheel or ``pip install .`` runs from any directory; an editable
    install reads the checkout's ``conf/`` directly.
    """
    package = Path(__file__).resolve().parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"fedbench's configs are missing: neither {package / 'conf'} nor {package.parent / 'conf'} "
        "holds config.yaml; reinstall fedbench"
    )


CONF_DIR = _conf_dir()
