"""Property-based tests (hypothesis): random valid configs run, random invalid ones are refused.

Valid configs are drawn on tiny data (breast_cancer, logistic regression, a few clients and
rounds) and run in-process through :func:`fedbench.run.run_experiment`; every run must end
``completed`` or ``diverged`` with well-formed result files. Invalid settings (out of range,
wrong type, misspelt keys) must be refused with one line naming the key, before any training.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO, compose
from fedbench.config_check import OverrideError, check_overrides
from fedbench.errors import ConfigError
from fedbench.run import run_experiment, validate

CONF_DIR = REPO / "conf"
TOP_LEVEL_INTEGERS = ("num_clients", "clients_per_round", "rounds", "local_epochs", "batch_size",
                      "eval_every", "unroll", "seed")
TOP_LEVEL_NUMBERS = ("lr", "site_speed", "stragglers.fraction")
ALGORITHMS = ("fedavg", "fedprox", "fedadam", "fedyogi", "scaffold", "fednova", "fedsgd",
              "fedbuff", "centralized", "local")
#: Words Hydra reads as something other than a string.
_NOT_STRINGS = {"true", "false", "null", "inf", "nan"}


@st.composite
def tiny_runs(draw) -> list[str]:
    """Overrides of a valid tiny experiment (a few seconds, mostly compilation)."""
    num_clients = draw(st.integers(2, 6))
    return [
        "dataset=breast_cancer",
        "model=logreg",
        f"partition={draw(st.sampled_from(['iid', 'dirichlet']))}",
        f"algorithm={draw(st.sampled_from(ALGORITHMS))}",
        f"num_clients={num_clients}",
        f"clients_per_round={draw(st.integers(1, num_clients))}",
        f"rounds={draw(st.integers(1, 4))}",
        f"eval_every={draw(st.integers(1, 3))}",
        f"local_epochs={draw(st.integers(1, 2))}",
        f"batch_size={draw(st.sampled_from([4, 8, 16, 32]))}",
        f"lr={draw(st.floats(1e-3, 0.5)):.4g}",
        f"seed={draw(st.integers(0, 2**16))}",
    ]


@settings(max_examples=8, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(overrides=tiny_runs())
def test_random_valid_configs_finish_with_well_formed_results(overrides):
    cfg = compose(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        returned = run_experiment(cfg, out, progress=None)
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((out / "summary.json").read_text())

    rounds, every = cfg["rounds"], cfg["eval_every"]
    expected = sorted(set(range(0, rounds, every)) | {rounds})
    seen = [row["round"] for row in rows]
    assert summary["status"] == returned["status"]
    assert summary["status"] in ("completed", "diverged")
    if summary["status"] == "completed":
        assert seen == expected
        for row in rows:
            for key, value in row.items():
                assert isinstance(value, (int, float)) and math.isfinite(value), (key, row)
        assert summary["sites"] is not None
    else:  # stopped at the evaluation that saw it: a prefix of the schedule
        assert seen == expected[: len(seen)] and len(seen) >= 2
    assert summary["final"] == rows[-1]
    assert summary["config"]["rounds"] == rounds
    assert summary["versions"]["jax"] and "jax_config" in summary["device"]


# ------------------------------------------------------------------ invalid settings


@settings(max_examples=25, deadline=None, database=None)
@given(key=st.sampled_from(TOP_LEVEL_INTEGERS), value=st.integers(-10**6, 0))
def test_non_positive_integers_are_refused_naming_the_key(key, value):
    if key == "seed" and value == 0:
        value = -1  # 0 is a valid seed
    cfg = compose([f"{key}={value}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key and err.value.value == value
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{key}={value!r}")


@settings(max_examples=15, deadline=None, database=None)
@given(key=st.sampled_from(("lr",)), value=st.floats(max_value=0.0) | st.just(float("inf")))
def test_non_positive_or_infinite_lr_is_refused(key, value):
    cfg = compose([f"{key}={value!r}"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key and "\n" not in str(err.value)


_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCXYZ_", min_size=1, max_size=10).filter(
    lambda word: word.lower() not in _NOT_STRINGS and word not in ALGORITHMS
)


@settings(max_examples=15, deadline=None, database=None)
@given(key=st.sampled_from(TOP_LEVEL_INTEGERS + TOP_LEVEL_NUMBERS), word=_word)
def test_non_numbers_are_refused_before_composing(key, word):
    with pytest.raises(ConfigError) as err:
        check_overrides([f"{key}={word}"], CONF_DIR)
    assert err.value.key == key and err.value.value == word
    message = str(err.value)
    assert "\n" not in message
    assert ("an integer" if key in TOP_LEVEL_INTEGERS else "a number") in message


@settings(max_examples=10, deadline=None, database=None)
@given(key=st.sampled_from(TOP_LEVEL_INTEGERS), value=st.floats(-1e6, 1e6).filter(
    lambda v: not float(v).is_integer()))
def test_fractions_for_integer_keys_are_refused(key, value):
    with pytest.raises(ConfigError) as err:
        check_overrides([f"{key}={value!r}"], CONF_DIR)
    assert err.value.key == key and "an integer" in str(err.value)


_KEYS = ("rounds", "clients_per_round", "local_epochs", "batch_size", "eval_every",
         "num_clients", "stragglers.fraction", "stragglers.policy", "site_speed",
         "partition.alpha", "partition.min_size", "dataset.test_fraction", "model.hidden")


@functools.cache
def _all_keys() -> frozenset[str]:
    cfg = compose([])

    def walk(node, prefix):
        for k, v in node.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from walk(v, prefix + k + ".")

    return frozenset(walk(cfg, ""))


@st.composite
def misspelt(draw) -> str:
    key = draw(st.sampled_from(_KEYS))
    *parents, last = key.split(".")
    i = draw(st.integers(0, len(last) - 1))
    edit = draw(st.sampled_from(["drop", "double", "swap", "replace"]))
    if edit == "drop":
        last = last[:i] + last[i + 1:]
    elif edit == "double":
        last = last[:i] + last[i] + last[i:]
    elif edit == "swap" and i + 1 < len(last):
        last = last[:i] + last[i + 1] + last[i] + last[i + 2:]
    else:
        last = last[:i] + draw(st.sampled_from("qxz")) + last[i + 1:]
    return ".".join([*parents, last])


@settings(max_examples=25, deadline=None, database=None)
@given(key=misspelt(), value=st.sampled_from(["1", "0.5", "drop", "[1]"]))
def test_misspelt_keys_are_refused_with_the_nearest_key(key, value):
    valid = _all_keys()
    if key in valid or not key or key.endswith("."):
        return
    with pytest.raises(OverrideError) as err:
        check_overrides([f"{key}={value}"], CONF_DIR)
    message = str(err.value)
    assert err.value.key == key and "\n" not in message
    assert f"unknown key {key!r}" in message
    suggested = message.split("did you mean '")[1].split("'")[0]
    assert suggested in valid


@settings(max_examples=10, deadline=None, database=None)
@given(option=_word)
def test_unknown_group_options_list_the_available_ones(option):
    with pytest.raises(ConfigError) as err:
        check_overrides([f"algorithm={option}"], CONF_DIR)
    assert err.value.key == "algorithm" and "fedavg" in str(err.value)
