"""fedbench-suitability (fedbench/suitability.py): the report for a tiny federation, each
dimension's numbers recomputed from the files of the tools it ran, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedbench.suitability import compose, main, suitability

TINY = ["num_clients=3", "clients_per_round=3", "rounds=4", "eval_every=2", "model.hidden=[8]",
        "suitability.audit={trials:1,iterations:2,local_steps:1,defences:[],"
        "membership:{shadows:4},epsilon:{canaries:10}}",
        "suitability.contribution.method=exact", "suitability.compare.bootstrap=20",
        "suitability.render=false", "suitability.epsilon=4", "links=profiles",
        "+links.shares.fibre=0.5"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("suit")
    return out, suitability(compose(TINY), out, progress=False)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_report_files(report):
    out, result = report
    text = (out / "suitability.md").read_text()
    for section in ("## Data sensitivity", "## Dataset size asymmetry",
                    "## Communication infrastructure", "## Regulatory environment",
                    "## FL vs local vs pooled"):
        assert section in text
    assert text.count("Points ") == 4
    # words, not raw JSON: "20 rural 4g", never {"rural_4g": 20}
    communication = text.split("## Communication infrastructure")[1].split("## ")[0]
    assert '{"' not in communication and "Infinity" not in communication
    page = (out / "suitability.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and 'src="http' not in page
    saved = json.loads((out / "suitability.json").read_text())
    assert set(saved["directions"]) == {"sensitivity", "asymmetry", "communication",
                                        "regulatory"}


def test_asymmetry_matches_partition_and_shapley(report):
    out, result = report
    stats = json.loads((out / "compare/fedavg/seed=0/summary.json").read_text())["partition_stats"]
    sizes = np.asarray(stats["client_sizes"])
    a = result["asymmetry"]
    assert a["largest_share"] == pytest.approx(sizes.max() / sizes.sum())
    c = a["contribution"]
    assert sum(c["shapley"]) == pytest.approx(c["v_all"] - c["v_empty"], abs=1e-6)
    from fedbench.contribution import contribution

    again = contribution(compose(TINY) | {"privacy": {"name": "none"}}, "exact", "pooled", 1)
    np.testing.assert_allclose(c["shapley"], again["shapley"], atol=1e-6)


def test_hours_to_target_from_simulated_seconds(report):
    out, result = report
    rows = result["communication"]["rows"]
    for row, run_dir in zip(rows, [out / "compare/fedavg/seed=0", out / "compressed"]):
        metrics = _metrics(run_dir)
        hit = [m for m in metrics if m["test_accuracy"] >= result["target"]]
        expected = hit[0]["simulated_seconds"] / 3600 if hit else None
        assert row["hours_to_target"] == pytest.approx(expected) if hit else row[
            "hours_to_target"] is None
        assert row["seconds_per_round"] == pytest.approx(
            metrics[-1]["simulated_seconds"] / metrics[-1]["round"])
    assert rows[1]["bytes_up_per_round"] < rows[0]["bytes_up_per_round"]


def test_privacy_numbers_match_runs_and_audit(report):
    out, result = report
    dense, dp = _metrics(out / "compare/fedavg/seed=0"), _metrics(out / "dp")
    g = result["regulatory"]
    assert g["cost"] == pytest.approx(dense[-1]["test_accuracy"] - dp[-1]["test_accuracy"])
    assert g["epsilon_spent"] == pytest.approx(4, abs=0.01)
    # every site in every round: DP-FTRL (suitability.mechanism=auto), what the DP run used
    spent = json.loads((out / "dp" / "summary.json").read_text())["privacy"]
    assert g["mechanism"] == spent["mechanism"] == "dp_ftrl"
    assert g["sensitivity"] == spent["sensitivity"] > 0
    audit = json.loads((out / "audit/audit.json").read_text())
    assert result["sensitivity"]["membership_auc"]["loss_threshold"] == pytest.approx(
        audit["membership"]["loss_threshold"]["auc"])
    sent = [r for r in audit["inversion"]["rows"] if r["defence"] == "as sent"]
    assert [r["ssim"] for r in result["sensitivity"]["inversion"]] == pytest.approx(
        [r["ssim"] for r in sent])
    verdicts = json.loads((out / "compare/verdicts.json").read_text())
    assert result["compare"] == verdicts


@pytest.mark.parametrize("override, key", [
    ("suitability.epsilon=0", "suitability.epsilon"),
    ("suitability.epsilon=-1", "suitability.epsilon"),
    ("suitability.profiles=[moon]", "suitability.profiles"),
    ("links.profile=moon", "links.profile"),
    ("suitability.mechanism=dp_sample", "suitability.mechanism"),
    ("suitability.mechanism=dp_ftrl", "suitability.mechanism"),  # 4 of 8 sites a round
    ("suitability.mechanism=ddp", "suitability.mechanism"),  # likewise
])
def test_bad_input_is_one_line_naming_the_key(override, key, capsys, tmp_path):
    assert main(["links=profiles", "num_clients=8", "clients_per_round=4", override,
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err
    assert not (tmp_path / "compare").exists()


def test_html_renders_with_every_image(report):
    from fedbench.audit.render import find_chromium
    from fedbench.suitability_report import render_report

    out, _ = report
    if find_chromium() is None:
        pytest.skip("no Chromium (Debian: apt-get install -y chromium)")
    assert render_report(out / "suitability.html") == "3 of 3 images loaded"
    from fedbench.audit.render import page_width

    assert page_width(out / "suitability.html") <= 1200  # no sideways scrolling at 1,200 px
    assert (out / "suitability.png").stat().st_size > 10_000


def test_distributed_dp_is_a_regulatory_mechanism_in_words():
    from fedbench.suitability import mechanism
    from fedbench.suitability_report import _mechanism_words

    assert mechanism("ddp", {"clients_per_round": 6, "num_clients": 6}) == "ddp"
    words = _mechanism_words({"mechanism": "ddp"})
    assert "server sees only the secure sum" in words and "every site every round" in words
