"""The audit's metrics and images to the configured tracker (``tracking=wandb``).

The federation's own run is tracked by :func:`fedbench.run.run_experiment` as any ``fedbench``
run; the audit is a second tracked run (``run_name`` ``audit`` unless ``tracking.run_name`` is
set; W&B writes under the audit's run directory) with the audit's config, one history row of
metrics at the federation's last round, the report's images (the reconstruction grids), and the
verdict in its summary. ``tracking=disabled`` (the default) imports and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.tracking import Tracker, build_tracker


def audit_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The report's numbers, flat: ``inversion/<scenario>/<defence>/<metric>``,
    ``membership/<attack>/<metric>``, ``personal/<attack>/<metric>`` (each site's personalised
    model), ``sites/<attack>/<metric>``, ``epsilon/<name>``, ``epsilon/one_round/<name>`` and
    ``epsilon/whole_run/<name>`` (finite numbers only)."""
    out: dict[str, float] = {}
    for row in result["inversion"]["rows"]:
        for key in ("mse", "psnr", "ssim", "label_accuracy"):
            out[f"inversion/{row['scenario']}/{row['defence']}/{key}"] = float(row[key])
    for group in ("membership", "personal"):
        for attack, summary in (result.get(group) or {}).items():
            if isinstance(summary, Mapping):
                for key, value in summary.items():
                    out[f"{group}/{attack}/{key}"] = float(value)
    sites = result.get("sites") or {}
    for attack in ("lira_online", "lira_offline"):
        for key, value in (sites.get(attack) or {}).items():
            out[f"sites/{attack}/{key}"] = float(value)
    eps = result.get("epsilon") or {}
    for key in ("claimed", "delta", "noise_multiplier"):
        if isinstance(eps.get(key), (int, float)):
            out[f"epsilon/{key}"] = float(eps[key])
    for audit in ("one_round", "whole_run"):
        for key, value in (eps.get(audit) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"epsilon/{audit}/{key}"] = float(value)
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_audit(tracker: Tracker, result: Mapping[str, Any], images: Mapping[str, str | Path],
              round: int) -> None:  # noqa: A002 (the FL word)
    """The audit's metrics and ``images`` (name -> PNG path) at server round ``round``."""
    tracker.log(audit_metrics(result), round=round)
    if images:
        tracker.log_images(images, round=round)


def track_audit(cfg: Mapping[str, Any], result: Mapping[str, Any], out_dir: str | Path,
                verdict: list[str]) -> Tracker:
    """Opens a tracked run for the audit (as ``cfg["tracking"]`` says), logs it and closes it."""
    out_dir = Path(out_dir)
    tracker = build_tracker(cfg.get("tracking"), out_dir, run_name="audit")
    if type(tracker) is Tracker:  # tracking=disabled: nothing to do, nothing imported
        return tracker
    tracker.start(dict(cfg), {})
    try:
        images = {f"audit/{p.stem}": p for p in sorted(out_dir.glob("reconstructions_*.png"))}
        log_audit(tracker, result, images, round=int(cfg.get("rounds") or 0))
    except BaseException:
        tracker.finish(None, exit_code=1)
        raise
    tracker.finish({"verdict": " ".join(verdict), "status": "completed"})
    return tracker
