"""One source for algorithm settings: building an algorithm from its name alone gives what its
``conf/algorithm/<name>.yaml`` says.

Expectations are the YAML values themselves, pushed through the update rules written out here
(the server step of SGD and of Reddi et al. 2021, Algorithm 2), not the outputs of our builders.
"""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from conftest import REPO

from fedbench.algorithm import ALGORITHMS, build_algorithm
from fedbench.errors import ConfigError

ALGORITHM_YAMLS = sorted((REPO / "conf" / "algorithm").glob("*.yaml"))


def test_every_algorithm_has_a_yaml_and_every_yaml_an_algorithm():
    assert sorted(p.stem for p in ALGORITHM_YAMLS) == sorted(ALGORITHMS)


def _first_server_step(name: str, settings: dict, g: np.ndarray) -> np.ndarray:
    """The first server update for pseudo-gradient ``g`` from ``settings`` (the YAML values)."""
    if name.removeprefix("fed") in ("adam", "yogi", "adagrad"):
        b1, b2, tau = settings["beta1"], settings["beta2"], settings["tau"]
        lr = settings["server_lr"]
        m = (1 - b1) * g
        v0 = tau**2
        if name == "fedadagrad":
            v = v0 + g**2
        elif name == "fedadam":
            v = b2 * v0 + (1 - b2) * g**2
        else:
            v = v0 - (1 - b2) * g**2 * np.sign(v0 - g**2)
        return -lr * m / (np.sqrt(v) + tau)
    return -settings.get("server_lr", 1.0) * g  # FedAvg-style servers: w += server_lr * mean delta


@pytest.mark.parametrize("path", ALGORITHM_YAMLS, ids=lambda p: p.stem)
def test_building_from_the_name_gives_the_yaml_settings(path):
    # As Hydra resolves it standalone (semifed's local: ${oc.select:model.local,[]} -> []).
    settings = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    name = settings["name"]
    clients_per_round = 4
    algorithm = build_algorithm({"name": name}, clients_per_round)
    assert algorithm.name == name
    # FedProx's proximal coefficient (Li et al. 2020, Eq. 2); 0 for every other algorithm.
    assert algorithm.settings.get("mu", 0.0) == pytest.approx(settings.get("mu", 0.0))
    if name == "fedbuff":
        assert algorithm.buffer_size == (settings["buffer_size"] or clients_per_round)
        assert algorithm.concurrency == (settings["concurrency"] or clients_per_round)
    for key, value in settings.items():  # every hyper-parameter the builder keeps is the YAML's
        if key in algorithm.settings and isinstance(value, list):  # names (semifed's local)
            assert algorithm.settings[key] == value, key
        elif key in algorithm.settings:
            assert algorithm.settings[key] == pytest.approx(value or clients_per_round), key
    if name == "feddyn":  # no server optimiser: w <- mean model - h / alpha (Acar et al. 2021)
        assert algorithm.settings["alpha"] == pytest.approx(settings["alpha"])
        return
    if name == "fedexp":  # no server optimiser: w <- w + eta_g Delta (Jhunjhunwala et al. 2023)
        assert algorithm.settings["epsilon"] == pytest.approx(settings["epsilon"])
        return
    g = np.array([0.3, -2.0, 1e-4], np.float32)
    opt = algorithm.server_optimizer
    step, _ = opt.update(g, opt.init(np.zeros_like(g)), np.zeros_like(g))
    np.testing.assert_allclose(np.asarray(step), _first_server_step(name, settings, g), rtol=1e-5)
    # The same algorithm built from the full YAML is the same algorithm.
    full = build_algorithm(settings, clients_per_round)
    assert (full.settings.get("mu", 0.0), full.buffer_size, full.concurrency) == (
        algorithm.settings.get("mu", 0.0), algorithm.buffer_size, algorithm.concurrency)


def test_fedprox_default_is_not_fedavg():
    # fedprox.yaml's default
    assert build_algorithm({"name": "fedprox"}).settings.get("mu", 0.0) == pytest.approx(0.01)


def test_an_explicit_null_setting_names_the_key():
    with pytest.raises(ConfigError) as err:
        build_algorithm({"name": "fedprox", "mu": None})
    assert err.value.key == "algorithm.mu"
