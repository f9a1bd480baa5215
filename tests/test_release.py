"""``fedbench-release`` (issue 27, item 4): a release bundle holds only what epsilon covers.

One tiny DP run (client-level DP, breast cancer, 3 sites, 2 rounds) is shared by the tests. What
epsilon covers is recomputed here from the run's own ``summary.json`` (its ``non_private_outputs``)
and the lists of :mod:`fedbench.privacy.release`; the final model is read from the last
checkpoint with orbax directly. The refusals (no DP, a diverged run, a non-empty ``OUT``, ...)
write nothing. Also: ``privacy.release_metrics=false`` withholds the pooled test metrics where
each client is scored with its own, non-DP model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import compose

from fedbench.privacy.release import PRIVATE_METRICS, TEST_METRICS, evaluates_own_models
from fedbench.release_bundle import REFUSED, main

TINY = ["dataset=breast_cancer", "model=logreg", "num_clients=3", "clients_per_round=3",
        "eval_every=1"]
DP = ["privacy=dp_client", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]
BUNDLE = {"model.npz", "metrics.jsonl", "privacy.json", "MANIFEST.json", "README.md"}


def run(path: Path, overrides: list[str]) -> Path:
    from fedbench.run import run_experiment

    run_experiment(compose([*TINY, *overrides]), path, progress=None)
    return path


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory) -> Path:
    return run(tmp_path_factory.mktemp("dp") / "run", [*DP, "rounds=2"])


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint_params(checkpoints: Path) -> dict:
    """The last checkpoint's parameters as flax's ``{"params": ...}`` collection."""
    import orbax.checkpoint as ocp

    last = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    params = ocp.StandardCheckpointer().restore((checkpoints / str(last) / "state").resolve())[
        "params"]
    return params if "params" in params else {"params": params}


def by_path(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(k.key) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def refused(capsys, run_dir: Path, out: Path) -> str:
    """``fedbench-release`` refuses with exit status 2 and one line; returns the line."""
    assert main([str(run_dir), str(out)]) == REFUSED
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedbench-release: refused: ") and "\n" not in err, err
    return err


def copy_with(run_dir: Path, to: Path, **summary_changes) -> Path:
    shutil.copytree(run_dir, to)
    summary = json.loads((to / "summary.json").read_text())
    (to / "summary.json").write_text(json.dumps({**summary, **summary_changes}))
    return to


@pytest.mark.slow
def test_the_bundle_holds_exactly_what_epsilon_covers(dp_run, tmp_path, capsys):
    out = tmp_path / "release"
    assert main([str(dp_run), str(out)]) == 0
    assert "epsilon" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == BUNDLE
    summary = json.loads((dp_run / "summary.json").read_text())
    privacy = summary["privacy"]
    uncovered = set(PRIVATE_METRICS) | set(TEST_METRICS) | set(privacy["non_private_outputs"])

    # Metrics: per row only the keys outside every not-covered list, values unchanged.
    original, released = rows(dp_run / "metrics.jsonl"), rows(out / "metrics.jsonl")
    assert len(released) == len(original) == 3
    for a, b in zip(original, released):
        assert set(b) == set(a) - uncovered == {"round", "epsilon"}
        assert b == {k: a[k] for k in b}
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert set(manifest["metrics_left_out"]) == set(original[0]) - {"round", "epsilon"}

    # The accounting: the summary's, without its list of non-private outputs.
    accounting = json.loads((out / "privacy.json").read_text())
    for key in ("epsilon", "delta", "unit", "neighboring_relation", "accountant", "covers",
                "assumes_public", "noise"):
        assert accounting[key] == privacy[key], key
    assert accounting["epsilon"] == original[-1]["epsilon"] > 0
    assert "non_private_outputs" not in accounting and "release_metrics" not in accounting

    # The model: the final checkpoint's parameters, leaf for leaf.
    model = np.load(out / "model.npz")
    expected = by_path(checkpoint_params(dp_run / "checkpoints"))
    assert set(model.files) == set(expected) and expected
    for name, value in expected.items():
        np.testing.assert_array_equal(model[name], value)

    # The manifest: every file of the run left out, with why; checkpoints secret; hashes.
    on_disk = {p.relative_to(dp_run).as_posix() for p in dp_run.rglob("*") if p.is_file()}
    left_out = {item["path"]: item["why"] for item in manifest["left_out"]}
    assert set(left_out) == on_disk
    checkpoints = [p for p in left_out if p.startswith("checkpoints/")]
    assert checkpoints and all(left_out[p].startswith("secret") for p in checkpoints)
    assert all(left_out[p] for p in left_out)
    assert any("checkpoints" in s for s in manifest["secret"])
    assert any("seed" in s for s in manifest["secret"])  # reproducible noise: config and seed
    for item in manifest["files"]:
        assert hashlib.sha256((out / item["path"]).read_bytes()).hexdigest() == item["sha256"]
    assert "config" not in manifest and manifest["model"]["config"] == {"name": "logreg"}
    readme = (out / "README.md").read_text()
    assert "`checkpoints/`" in readme and "secret" in readme
    assert not list(tmp_path.glob(".release.*"))  # no temporary folder left behind


@pytest.mark.slow
def test_under_secure_noise_the_config_need_not_stay_secret_but_the_checkpoints_do(dp_run,
                                                                                  tmp_path):
    summary = json.loads((dp_run / "summary.json").read_text())
    secure = copy_with(dp_run, tmp_path / "secure", privacy={**summary["privacy"],
                                                             "noise": "secure"})
    assert main([str(secure), str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "MANIFEST.json").read_text())
    assert not any("seed" in s for s in manifest["secret"])
    assert any("checkpoints" in s for s in manifest["secret"])
    assert not manifest["summary_left_out"]["config"].startswith("secret")


@pytest.mark.slow
def test_an_existing_empty_out_is_used_and_a_non_empty_one_refused(dp_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(dp_run), str(empty)]) == 0
    assert {p.name for p in empty.iterdir()} == BUNDLE
    capsys.readouterr()
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert "not empty" in refused(capsys, dp_run, full)
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    assert (full / "notes.txt").read_text() == "mine"
    assert "inside the run directory" in refused(capsys, dp_run, dp_run / "release")
    assert not (dp_run / "release").exists()


@pytest.mark.slow
def test_a_run_without_dp_is_refused(tmp_path, capsys):
    plain = run(tmp_path / "plain", ["rounds=1"])
    assert "no DP" in refused(capsys, plain, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("change,words", [
    ({"status": "diverged"}, "'diverged'"),
    ({"privacy": None}, "no DP"),
    ({"replicas": ["seed=0", "seed=1"]}, "job of 2 replicas"),
])
def test_a_run_that_did_not_complete_is_refused(dp_run, tmp_path, capsys, change, words):
    copy = copy_with(dp_run, tmp_path / "copy", **change)
    assert words in refused(capsys, copy, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.slow
def test_no_summary_no_checkpoint_or_an_infinite_epsilon_is_refused(dp_run, tmp_path, capsys):
    assert "summary.json not found" in refused(capsys, tmp_path, tmp_path / "out")
    bare = copy_with(dp_run, tmp_path / "bare")
    shutil.rmtree(bare / "checkpoints")
    assert "no checkpoint" in refused(capsys, bare, tmp_path / "out")
    summary = json.loads((dp_run / "summary.json").read_text())
    noiseless = copy_with(dp_run, tmp_path / "noiseless",
                          privacy={**summary["privacy"], "epsilon": "inf"})
    assert "epsilon is inf" in refused(capsys, noiseless, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_failed_write_leaves_neither_out_nor_a_temporary_folder(dp_run, tmp_path, capsys,
                                                                  monkeypatch):
    import fedbench.release_bundle as rb

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(rb.os, "replace", fail)
    assert "disk full" in refused(capsys, dp_run, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_replica_of_a_seeds_job_releases_its_own_model(tmp_path, capsys):
    job = run(tmp_path / "job", [*DP, "rounds=1", "seeds=2"])
    names = json.loads((job / "summary.json").read_text())["replicas"]
    assert "job of 2 replicas" in refused(capsys, job, tmp_path / "out")
    stacked = by_path(checkpoint_params(job / "checkpoints"))
    for i, name in enumerate(names):
        out = tmp_path / f"out{i}"
        assert main([str(job / name), str(out)]) == 0
        model = np.load(out / "model.npz")
        for path, value in stacked.items():
            np.testing.assert_array_equal(model[path], value[i])
        notes = json.loads((out / "MANIFEST.json").read_text())["notes"]
        assert any("../checkpoints" in n for n in notes)


def test_under_dp_sample_epsilon_is_stated_in_the_accounting_but_not_per_round():
    """dp_sample lists its epsilon (the worst client's, from every client's size) as not
    covered: the rows keep the round only; privacy.json states the epsilon, and nothing else the
    block lists as not covered."""
    from fedbench.release_bundle import accounting, covered_keys

    privacy = {"mechanism": "dp_sample", "epsilon": 3.0, "delta": 1e-5, "unit": "example",
               "worst_client_steps": 40, "worst_client_sampling_rate": 0.2,
               "non_private_outputs": ["test_accuracy", "epsilon", "worst_client_sampling_rate",
                                       "worst_client_steps"]}
    row = {"round": 2, "test_accuracy": 0.8, "epsilon": 3.0, "train_loss": 0.3}
    assert covered_keys(row, privacy) == ["round"]
    assert covered_keys({**row, "clip": 0.7}, {**privacy, "non_private_outputs": []}) == [
        "round", "epsilon", "clip"]
    assert accounting(privacy, 2) == {"mechanism": "dp_sample", "epsilon": 3.0, "delta": 1e-5,
                                      "unit": "example", "rounds": 2}


# --------------------------------------------------------------------------------------------
# privacy.release_metrics=false and personal models


def test_release_metrics_false_withholds_test_metrics_of_per_client_models():
    from fedbench.privacy.plan import build_privacy

    kw = dict(algorithm_kind="federated", num_clients=4, clients_per_round=2, rounds=2,
              local_epochs=1, batch_size=4, client_sizes=np.asarray([8, 8, 8, 8]))
    cfg = {"name": "dp_client", "clip": 1.0, "noise_multiplier": 1.0, "release_metrics": False}
    row = {"round": 1, "train_loss": 0.5, "test_loss": 0.4, "test_accuracy": 0.9,
           "epsilon": 2.0}
    assert build_privacy(cfg, **kw).released(row) == {
        "round": 1, "test_loss": 0.4, "test_accuracy": 0.9, "epsilon": 2.0}
    personal = build_privacy(cfg, **kw, per_client_models=True)
    assert personal.released(row) == {"round": 1, "epsilon": 2.0}
    kept = build_privacy({**cfg, "release_metrics": True}, **kw, per_client_models=True)
    assert kept.released(row) == row  # release_metrics=true writes everything, as before


def test_own_models_are_those_evaluation_scores_each_client_with():
    from fedbench.algorithm import ALGORITHMS, build_algorithm
    from fedbench.evaluation import Evaluator

    seen = {}
    for name in sorted(ALGORITHMS):
        algorithm = build_algorithm({"name": name}, 2)
        evaluator = Evaluator(None, algorithm, None, lr=0.1, batch_size=1, eval_chunk=1)
        assert evaluates_own_models(algorithm) == evaluator.per_client_models, name  # one rule
        seen[name] = evaluates_own_models(algorithm)
    assert {"ditto", "apfl", "pfedme", "finetune"} <= {n for n, own in seen.items() if own}
    assert not seen["fedavg"]


@pytest.mark.slow
def test_ditto_without_release_metrics_writes_no_metric_of_its_personal_models(tmp_path):
    run(tmp_path / "ditto", [*DP, "rounds=1", "algorithm=ditto",
                             "privacy.release_metrics=false"])
    for row in rows(tmp_path / "ditto" / "metrics.jsonl"):
        assert set(row) == {"round", "epsilon"}, row
