"""The sampled-client axis sharded over several devices (#14 item 3).

Independent expectation: the same run on one device. The test process forces 4 CPU devices
(``--xla_force_host_platform_device_count=4``) in a subprocess, since XLA reads the flag once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path[:0] = [sys.argv[1] + "/tests", sys.argv[1]]
    from conftest import compose, make_uneven_data
    from fedbench.algorithm import build_algorithm
    from fedbench.model import MLP
    from fedbench.run import run_experiment
    from fedbench.simulator import Settings, Simulator

    assert jax.device_count() == 4
    from fedbench.distributed import clients_mesh
    out = {"mesh": [d.id for d in clients_mesh(4).devices]}  # process-major, then by id
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9, 14, 5, 30), seed=2)
    for name in ("fedavg", "scaffold"):
        params = {}
        for devices in (1, 4):
            settings = Settings(clients_per_round=5, local_epochs=2, batch_size=4, lr=0.1,
                                client_axis="vmap", devices=devices)
            sim = Simulator(MLP(3, (8,)), build_algorithm({"name": name}, 5), data, settings,
                            seed=0)
            state = sim.run(sim.run(sim.init(), 2), 1)  # two blocks: one program
            params[devices] = [np.asarray(p) for p in jax.tree.leaves(state.params)]
            out[f"{name}_traces_{devices}"] = sim.trace_count
            if devices == 4:
                text = sim._run.lower(sim.init(), data, np.int32(1)).compile().as_text()
                out[f"{name}_sharded"] = "devices=[4]" in text or "all-reduce" in text
        out[name] = max(float(np.abs(a - b).max()) for a, b in zip(params[1], params[4]))
    runs = {}
    for devices in (1, 4):
        cfg = compose(["rounds=3", "eval_every=3", "client_axis=vmap", f"devices={devices}",
                       "checkpoint_every=0"])
        runs[devices] = run_experiment(cfg, sys.argv[2] + f"/d{devices}", progress=None)["final"]
    out["run_accuracy"] = [runs[1]["test_accuracy"], runs[4]["test_accuracy"]]
    out["run_loss"] = [runs[1]["train_loss"], runs[4]["train_loss"]]
    print(json.dumps(out))
""")


def test_a_cohort_sharded_over_four_devices_equals_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["mesh"] == [0, 1, 2, 3]
    for name in ("fedavg", "scaffold"):
        assert out[name] < 1e-5, (name, out[name])  # 5 clients padded to 8 over 4 devices
        assert out[f"{name}_sharded"]
        assert out[f"{name}_traces_4"] == 1  # a second block reuses the sharded program
    assert abs(out["run_accuracy"][0] - out["run_accuracy"][1]) < 1e-3
    assert abs(out["run_loss"][0] - out["run_loss"][1]) < 1e-4


def test_more_devices_than_there_are_is_a_config_error(tmp_path):
    import pytest
    from conftest import compose

    from fedbench.errors import ConfigError
    from fedbench.run import run_experiment

    for overrides in (["devices=64", "client_axis=vmap"], ["devices=1.5"],
                      ["devices=2", "client_axis=map"]):
        with pytest.raises(ConfigError) as err:
            run_experiment(compose(["rounds=1", *overrides]), tmp_path, progress=None)
        assert err.value.key == "devices"
