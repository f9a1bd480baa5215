"""The audit report as a reader sees it (headless Chromium) and as a tracker receives it.

The report here is written from a small made-up audit result (random images, made-up metrics:
the tests check the rendering and the logging, not the attacks), so no training runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedbench.audit import render
from fedbench.audit.report import write_reports
from fedbench.audit.track import audit_metrics, log_audit, track_audit
from fedbench.tracking import Tracker

CHROMIUM = render.find_chromium()
NO_CHROMIUM = ("no headless Chromium installed (tried $CHROMIUM, " + ", ".join(render.CANDIDATES)
               + "); Debian: apt-get install -y chromium")


def _result(trials: int = 2) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    for scenario in ("one gradient step (FedSGD)", "5 local steps (FedAvg)"):
        for defence, ssim in (("as sent", 0.8), ("as computed", 0.8), ("noise 0.01", 0.1)):
            rows.append({"scenario": scenario, "defence": defence, "mse": 1e-3 / ssim,
                         "psnr": 30 * ssim, "ssim": ssim, "label_accuracy": 1.0,
                         "images": (rng.random((trials, 8, 8, 1)), rng.random((trials, 8, 8, 1)))})
    return {
        "config": {"dataset": {"name": "digits"}, "model": {"name": "mlp"},
                   "algorithm": {"name": "fedavg"}, "privacy": {"name": "none"},
                   "num_clients": 4, "rounds": 3, "seed": 0},
        "final": {"test_accuracy": 0.9},
        "inversion": {"rows": rows, "sent": {"clip": None, "compression": "none"}, "client": 0,
                      "examples": 10},
        "membership": {"lira_offline": {"auc": 0.6, "tpr_at_0.1%_fpr": 0.0,
                                        "tpr_at_1%_fpr": 0.03, "members": 10, "nonmembers": 5},
                       "loss_threshold": {"auc": 0.55, "tpr_at_0.1%_fpr": 0.0,
                                          "tpr_at_1%_fpr": 0.01, "members": 10, "nonmembers": 5}},
        "epsilon": {"claimed": math.inf},
    }


@pytest.fixture
def report(tmp_path) -> Path:
    write_reports(_result(), tmp_path)
    return tmp_path / "audit.html"


@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_every_report_image_loads_in_headless_chromium(report, tmp_path):
    status = render.image_load_status(report)
    assert len(status) == report.read_text().count("<img ") == 2
    assert all(s["loaded"] and s["width"] > 0 for s in status), status
    png = render.render_png(report, tmp_path / "audit.png")
    from PIL import Image

    with Image.open(png) as shot:
        assert shot.size[0] == 1200 and shot.size[1] > 800  # the whole page, not one screen
    # readable in a 1,200 px window: nothing wider than the window (no sideways scrolling);
    # the check has teeth: a page with a 2,000 px table is reported as wider
    assert render.page_width(report) <= 1200
    wide = tmp_path / "wide.html"
    wide.write_text("<html><body><div style='width:2000px'>x</div></body></html>")
    assert render.page_width(wide) > 1200
    # The check has teeth: a corrupted embedded image is reported as not loaded.
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace('base64,iVBOR', 'base64,AAAA', 1))
    assert [s["loaded"] for s in render.image_load_status(broken)] == [False, True]


def test_without_chromium_render_says_so(report, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CHROMIUM", raising=False)
    assert render.find_chromium() is None
    assert render.main([str(report)]) == 1
    assert "no Chromium" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="apt-get install -y chromium"):
        render.image_load_status(report)


class RecordingTracker(Tracker):
    def __init__(self):
        self.calls = []

    def log(self, metrics, round):  # noqa: A002
        self.calls.append(("log", dict(metrics), round))

    def log_images(self, images, round):  # noqa: A002
        self.calls.append(("images", dict(images), round))


def test_metrics_and_images_go_to_the_tracker(report):
    tracker = RecordingTracker()
    images = {"audit/reconstructions_0": report.parent / "reconstructions_0.png"}
    log_audit(tracker, _result(), images, round=3)
    (_, metrics, r1), (_, logged, r2) = tracker.calls
    assert r1 == r2 == 3 and logged == images
    assert metrics["inversion/one gradient step (FedSGD)/as sent/ssim"] == 0.8
    assert metrics["membership/lira_offline/auc"] == 0.6
    assert "epsilon/claimed" not in metrics  # infinite: left out, not logged as inf
    assert all(math.isfinite(v) for v in metrics.values())


def test_tracking_disabled_imports_and_writes_nothing(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # any `import wandb` would fail
    before = sorted(p.name for p in report.parent.iterdir())
    assert type(track_audit({"tracking": {"name": "disabled"}, "rounds": 3}, _result(),
                            report.parent, ["ok"])) is Tracker
    assert sorted(p.name for p in report.parent.iterdir()) == before


def test_wandb_offline_run_holds_the_audit_metrics_and_images(report, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = {"tracking": {"name": "wandb", "mode": "offline", "project": "audit-test",
                        "dir": str(tmp_path / "wb")}, "rounds": 3}
    result = _result()
    track_audit(cfg, result, report.parent, ["a verdict"])
    (run,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    logged_pngs = list((run / "files" / "media" / "images").rglob("*.png"))
    assert len(logged_pngs) == 2  # both reconstruction grids
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line]
    history = {}
    for r in records:
        if r["type"] == "history":
            history.update(r["history"]["item"])
    for key, value in audit_metrics(result).items():
        assert history[key] == pytest.approx(value), key
    assert history["round"] == 3


def test_metrics_and_report_carry_personal_models_and_the_whole_run_audit(tmp_path):
    result = _result()
    roc = {"tpr_at_0.1%_fpr": 0.0, "tpr_at_1%_fpr": 0.02, "members": 10, "nonmembers": 5}
    result["personal"] = {"loss_threshold": {"auc": 0.79, **roc},
                          "lira_offline": {"auc": 0.8, **roc},
                          "sites": 4, "reference_models": 3}
    result["epsilon"] = {"claimed": 8.0, "delta": 1e-5, "whole_run": {
        "theoretical": 8.0, "kind": "gradient", "runs": 4, "canary_sites": 2,
        "epsilon_one_run": 0.9, "epsilon_one_run_fdp": 1.3, "ceiling_fdp": 5.6,
        "auroc": 0.86, "canaries": 200}}
    flat = audit_metrics(result)
    assert flat["personal/lira_offline/auc"] == 0.8
    assert flat["epsilon/whole_run/epsilon_one_run_fdp"] == 1.3
    assert not any(k.endswith("/kind") for k in flat)  # numbers only
    write_reports(result, tmp_path)
    text = (tmp_path / "audit.md").read_text()
    assert "personalised model" in text and ("| canary sites (white box: a secret update "
                                             "direction) | one site | 8.00 | 0.90 | 1.30 |"
                                             in text)
    assert "at least 1.30, consistent with the claim" in " ".join(json.loads(
        (tmp_path / "audit.json").read_text())["verdict"])
