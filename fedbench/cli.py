"""The ``fedbench`` command: a Hydra app over ``conf/``.

Bad input ends the run before any training with one line on stderr naming the key, the value and
what is allowed, and exit status 2. An unknown group option (``dataset=nope``) is reported by
Hydra itself, with the available options, and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedbench.errors import BufferOverflowError, ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> None:
    from fedbench.run import run_experiment

    # JAX logs at INFO that it found no TPU; that is not news to a CPU user. dp-accounting's
    # RDP accountant warns for every fractional order it drops (it then uses the others).
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)

    try:
        container = OmegaConf.to_container(cfg, resolve=True)
        out_dir = HydraConfig.get().runtime.output_dir
        print(f"fedbench: writing to {out_dir}", flush=True)
        run_experiment(container, out_dir)
    except ConfigError as err:
        print(f"fedbench: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except BufferOverflowError as err:
        print(f"fedbench: error: {err}", file=sys.stderr, flush=True)
        sys.exit(3)


def main() -> None:
    """Console entry point (``fedbench`` and ``python -m fedbench``)."""
    _app()


if __name__ == "__main__":
    main()
