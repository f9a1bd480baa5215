"""Several hosts, one federation (#14 item 3): a dry run of the plan on one machine.

No multi-host machine is available: these tests check what each process would do (the device
order, each process's block of the cohort, the call into ``jax.distributed`` and the single
writer) with stand-in devices and a stand-in ``jax.distributed``; the sharded program itself
is checked against one device in tests/test_devices.py (4 forced CPU devices).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from conftest import REPO

from fedbench import atomic, distributed
from fedbench.errors import ConfigError


def fake_devices(processes: int, per_process: int) -> list:
    devices = [SimpleNamespace(process_index=p, id=p * per_process + i)
               for p in range(processes) for i in range(per_process)]
    return devices[::-1]  # any order in, process-major order out


def test_two_hosts_of_two_gpus_each_hold_one_contiguous_block_of_the_cohort():
    ordered = distributed.ordered_devices(fake_devices(2, 2), 4)
    assert [(d.process_index, d.id) for d in ordered] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    # A cohort of 10 over 4 devices: padded to 12 (2 zero-weight slots), 3 slots per device.
    assert distributed.cohort_blocks(ordered, 10) == {0: [(0, 3), (3, 6)], 1: [(6, 9), (9, 12)]}
    assert distributed.cohort_blocks(distributed.ordered_devices(fake_devices(4, 1), 4), 8) == {
        0: [(0, 2)], 1: [(2, 4)], 2: [(4, 6)], 3: [(6, 8)]}
    with pytest.raises(ConfigError, match="devices"):
        distributed.ordered_devices(fake_devices(2, 2), 5)


def test_the_mesh_is_built_over_the_first_devices_in_order():
    mesh = distributed.clients_mesh(1)
    assert mesh is None  # one device: no mesh, the plain program
    devices = jax.devices()
    if len(devices) > 1:  # forced CPU devices (tests/test_devices.py runs this with 4)
        mesh = distributed.clients_mesh(len(devices))
        assert mesh.axis_names == ("clients",) and list(mesh.devices) == list(devices)


def test_initialize_joins_through_jax_distributed_and_only_process_zero_writes(
        monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(atomic, "WRITER", True)
    assert distributed.initialize({"distributed": {"enabled": False}}) is False
    assert calls == [] and atomic.WRITER
    # Under Slurm nothing is given: JAX reads the coordinator, count and id from the task.
    assert distributed.initialize({"distributed": {"enabled": True, "coordinator": None}})
    assert calls == [{}]
    assert not atomic.WRITER  # process 1 of 2
    atomic.write_json(tmp_path / "summary.json", {"a": 1})
    assert not (tmp_path / "summary.json").exists()
    distributed.initialize({"distributed": {"enabled": True, "coordinator": "node001:1234",
                                            "processes": 2, "process_id": 1}})
    assert calls[-1] == {"coordinator_address": "node001:1234", "num_processes": 2,
                         "process_id": 1}
    with pytest.raises(ConfigError, match="distributed.enabled"):
        distributed.initialize({"distributed": {"enabled": "yes"}})


def test_multihost_slurm_launcher_checks_against_the_plugin_schema():
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm_multihost"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    checked = OmegaConf.merge(OmegaConf.structured(SlurmQueueConf),
                              OmegaConf.to_container(launcher))  # raises on a bad key/type
    assert checked.tasks_per_node == checked.gpus_per_node  # one process per GPU
    assert checked.nodes >= 2
    assert cfg.distributed.enabled is False  # off unless asked for
    assert OmegaConf.to_container(cfg.distributed) == {  # read from Slurm unless given
        "enabled": False, "coordinator": None, "processes": None, "process_id": None}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_joined_over_gloo_reproduce_the_single_process_run(tmp_path):
    """Multi-host for real on one machine (issue 30 item 7): two ``fedbench`` processes join
    through ``jax.distributed.initialize`` (CPU collectives over gloo) and shard the cohort over
    both processes' devices (``devices=all``). The independent expectation is the same command
    in one process on one device: the metrics must agree, and only process 0 writes."""
    import json
    import os
    import subprocess
    import sys

    common = ["dataset=synthetic", "partition=natural", "model=logreg", "rounds=2",
              "eval_every=1", "checkpoint_every=0", "client_axis=vmap"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "JAX_CPU_COLLECTIVES_IMPLEMENTATION")}
    env["JAX_PLATFORMS"] = "cpu"  # one CPU device per process
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, "-m", "fedbench", *common, "devices=all", "distributed.enabled=true",
         f"distributed.coordinator=localhost:{port}", "distributed.processes=2",
         f"distributed.process_id={i}", f"hydra.run.dir={tmp_path / f'p{i}'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
    single = subprocess.run([sys.executable, "-m", "fedbench", *common, "devices=1",
                             f"hydra.run.dir={tmp_path / 'single'}"], env=env,
                            capture_output=True, text=True, timeout=300)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert single.returncode == 0, single.stdout + single.stderr
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]

    def metrics(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]

    joint, alone = metrics("p0"), metrics("single")
    assert [m["round"] for m in joint] == [m["round"] for m in alone] == [0, 1, 2]
    for a, b in zip(joint, alone):
        np.testing.assert_allclose(a["test_accuracy"], b["test_accuracy"], rtol=1e-6)
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    summary = json.loads((tmp_path / "p0" / "summary.json").read_text())
    assert summary["device"]["device_count"] == 2  # both processes' devices in one mesh
    assert not (tmp_path / "p1" / "metrics.jsonl").exists()  # process 1 writes no results
    assert not (tmp_path / "p1" / "summary.json").exists()
