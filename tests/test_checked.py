"""One validation pass (fedbench/checked.py): every setting the config alone decides is refused
before the dataset is loaded, and a run is checked once.

Each bad config below used to be caught by a builder at some point of building the run, some
after the dataset had been loaded and partitioned (stragglers, links, the store's dtype,
``model.local``, a replica's privacy settings). Here ``load_dataset`` raises if called, so a
check that moved back into the building would fail these tests.
"""

from __future__ import annotations

import pytest

import fedbench.checked
import fedbench.run
from fedbench.errors import ConfigError
from fedbench.run import build_simulator, run_experiment
from conftest import compose

BAD = [  # (overrides, the key the error must name)
    (["lr=-1"], "lr"),
    (["members=[0,99]"], "members"),
    (["algorithm=fedbuff", "algorithm.concurrency=999"], "algorithm.concurrency"),
    (["privacy=dp_client", "privacy.clip=-1"], "privacy.clip"),
    (["privacy=dp_client", "privacy.delta=2"], "privacy.delta"),
    (["privacy=dp_client", "privacy.noise=loud"], "privacy.noise"),
    (["privacy=dp_client", "+sweep.target_epsilon=[1,-1]", "privacy.noise_multiplier=null"],
     "privacy.target_epsilon"),
    (["algorithm=fedbuff", "privacy=dp_client"], "privacy"),
    (["compression=topk", "compression.fraction=2"], "compression.fraction"),
    (["stragglers.fraction=2"], "stragglers.fraction"),
    (["stragglers.fraction=0.5", "stragglers.policy=partial", "local_epochs=1"],
     "stragglers.policy"),
    (["client_store_dtype=float16"], "client_store_dtype"),
    (["links=profiles", "links.profile=carrier-pigeon"], "links.profile"),
    (["model=semi"], "model.local"),
    (["seeds=2", "site_speed=0.5"], "seeds"),
]


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*_):
        raise AssertionError("the dataset was loaded before the config was checked")

    monkeypatch.setattr(fedbench.run, "load_dataset", refuse)


@pytest.mark.parametrize("overrides,key", BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD])
def test_bad_settings_are_refused_before_the_dataset_is_loaded(overrides, key, no_loading,
                                                               tmp_path):
    try:
        cfg = compose(overrides)
    except Exception as err:  # a group option that does not exist here: the test is stale
        pytest.fail(f"{overrides} does not compose: {err}")
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path / "run", progress=None)
    assert err.value.key.startswith(key), (err.value.key, str(err.value))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_checked_run_is_built_without_checking_it_again(monkeypatch):
    cfg = compose(["rounds=1", "privacy=dp_client", "privacy.noise_multiplier=1.0",
                   "privacy.target_epsilon=null"])
    run = fedbench.checked.check_config(cfg)
    calls = []
    real = fedbench.checked.check_config
    monkeypatch.setattr(fedbench.run, "check_config", lambda c: calls.append(c) or real(c))
    built = build_simulator(run)
    assert calls == []
    assert built.algorithm is run.algorithm and built.sim.settings is run.settings
    build_simulator(cfg)  # a plain config is checked on the way in
    assert len(calls) == 1
