"""``fedbench-audit``: the audit group, bad settings, and the report files of a tiny run."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys

import pytest

from fedbench.audit.cli import with_audit_group
from fedbench.audit.settings import parse_audit
from fedbench.errors import ConfigError


def test_audit_group_is_added_once():
    assert with_audit_group(["rounds=2"]) == ["rounds=2", "+audit=default"]
    assert with_audit_group(["audit=default", "audit.trials=2"]) == ["+audit=default",
                                                                     "audit.trials=2"]


@pytest.mark.parametrize("cfg,key", [({"attack": "blur"}, "audit.attack"),
                                     ({"client": 99}, "audit.client"),
                                     ({"defences": [["smudge", 1]]}, "audit.defences"),
                                     ({"defences": [["prune", 1.5]]}, "audit.defences"),
                                     ({"membership": {"shadows": 2}}, "audit.membership.shadows"),
                                     ({"trails": 3}, "audit.trails"),
                                     ({"epsilon": {"run": {"kind": "x"}}},
                                      "audit.epsilon.run.kind"),
                                     ({"epsilon": {"run": {"sites": 1}}},
                                      "audit.epsilon.run.sites"),
                                     ({"epsilon": {"runs": 2}}, "audit.epsilon.runs"),
                                     ({"membership": {"shadow_kind": "x"}},
                                      "audit.membership.shadow_kind")])
def test_bad_audit_settings_name_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        parse_audit(cfg, num_clients=20)
    assert err.value.key == key


def _run(tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, "-c", "from fedbench.audit.cli import main; main()",
         f"hydra.run.dir={tmp_path}", *overrides],
        capture_output=True, text=True, timeout=600)


def test_bad_override_exits_2_with_one_line(tmp_path):
    done = _run(tmp_path, "audit.attack=blur", "rounds=1")
    assert done.returncode == 2
    assert "audit.attack='blur' is not allowed: one of: dlg, idlg, cosine" in done.stderr


@pytest.mark.slow
def test_tiny_audit_writes_a_self_contained_report(tmp_path):
    done = _run(tmp_path, "rounds=2", "eval_every=1", "audit.trials=1", "audit.iterations=20",
                "audit.local_steps=2", "audit.membership.shadows=4",
                "audit.membership.shadow_epochs=1", "audit.epsilon.canaries=100",
                "audit.epsilon.run.runs=2", "privacy=dp_client", "privacy.target_epsilon=8")
    assert done.returncode == 0, done.stderr[-2000:]
    stages = [line.split(" (")[0] for line in done.stdout.splitlines()
              if line.startswith("fedbench-audit: ") and line.endswith(" s)")]
    assert stages == ["fedbench-audit: training the federation",
                      "fedbench-audit: gradient inversion",
                      "fedbench-audit: epsilon: canaries through whole runs",
                      "fedbench-audit: membership of the trained model(s)",
                      "fedbench-audit: writing the report"], done.stdout  # in order, timed
    result = json.loads((tmp_path / "audit.json").read_text())
    assert {"inversion", "membership", "epsilon", "verdict"} <= set(result)
    assert result["epsilon"]["claimed"] == pytest.approx(8.0, abs=0.05)
    assert result["epsilon"]["one_round"]["epsilon_one_run"] <= (
        result["epsilon"]["one_round"]["round_epsilon"])
    run = result["epsilon"]["whole_run"]  # 10 canary sites through 2 runs of the federation
    assert run["theoretical"] == pytest.approx(result["epsilon"]["claimed"])
    assert run["canaries"] == 20 and run["epsilon_one_run"] <= run["theoretical"]
    assert "personal" not in result  # FedAvg: one global model
    assert result["inversion"]["sent"]["clip"] == 1.0
    page = (tmp_path / "audit.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "src=\"http" not in page and "coordinating server" in page
    # prose, not markup or raw JSON: no literal backticks or bold markers, no JSON dump
    text = re.sub(r"<[^>]+>", "", re.sub(r'src="[^"]+"', "", page))
    assert "`" not in text and "**" not in text and "Infinity" not in text
    assert '{"' not in text and "<code>" in page
    assert (tmp_path / "audit.md").read_text().startswith("# Privacy audit")


@pytest.mark.slow
def test_audit_of_a_personalised_federation_attacks_each_sites_model(tmp_path):
    done = _run(tmp_path, "algorithm=ditto", "rounds=2", "eval_every=1", "audit.trials=1",
                "audit.iterations=5", "audit.local_steps=2", "audit.membership.shadows=4",
                "audit.membership.shadow_epochs=1", "audit.defences=[]",
                "audit.epsilon.run.runs=2")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "audit.json").read_text())
    own = result["personal"]
    assert own["reference_models"] == 19 and own["lira_offline"]["members"] > 0
    assert "lira_online" in result["membership"]  # Ditto's global model is attacked too
    assert "personalised model" in (tmp_path / "audit.md").read_text()
    # No DP: 10 canary sites through 2 runs give the federation's empirical epsilon, measured
    # on the server model (Ditto's personal models are outside epsilon and this bound).
    run = result["epsilon"]["whole_run"]
    assert run["theoretical"] is None and run["canaries"] == 20
    assert 0 <= run["epsilon_one_run_fdp"] <= run["ceiling_fdp"]
    assert "personalised model" in run["not_scored"]
    assert "for this federation (a lower bound for this federation without DP" in " ".join(
        result["verdict"])
