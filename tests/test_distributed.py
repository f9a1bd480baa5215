"""Several hosts, one federation (#14 item 3): a dry run of the plan on one machine.

No multi-host machine is available: these tests check what each process would do (the device
order, each process's block of the cohort, the call into ``jax.distributed`` and the single
writer) with stand-in devices and a stand-in ``jax.distributed``; the sharded program itself
is checked against one device in tests/test_devices.py (4 forced CPU devices).
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
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
