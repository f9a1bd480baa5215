"""Experiment tracking: the ``tracking`` config group (``conf/tracking/``).

A tracker sees a run at three moments, all on the host between compiled blocks of rounds:
:meth:`Tracker.start` once the data are partitioned and every setting has been checked,
:meth:`Tracker.log` after each evaluation (once per block of ``eval_every`` rounds, never per
step), and :meth:`Tracker.finish` after ``summary.json`` is written. ``tracking=disabled`` (the
default) is :class:`Tracker` itself, which does nothing and imports nothing;
``tracking=wandb`` is :class:`WandbTracker`, which imports ``wandb`` only when a run starts.

Example::

    tracker = build_tracker({"name": "wandb", "mode": "offline"}, run_dir="outputs/run")
    tracker.start(config, partition_stats)
    tracker.log({"test_accuracy": 0.9}, round=10)
    tracker.finish(summary)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.errors import ConfigError

TRACKERS = ("disabled", "wandb")
WANDB_MODES = ("online", "offline", "disabled")

# Per-client lists in the partition statistics (fedbench.partition.heterogeneity_stats and
# fedbench.dataset.pipeline.build_federated): W&B gets them as one table, a row per client.
_PER_CLIENT = ("client_names", "client_sizes", "test_sizes", "total_variation", "label_histograms")


class Tracker:
    """Tracks nothing: the ``tracking=disabled`` tracker and the interface of every tracker."""

    def start(self, config: Mapping[str, Any], partition_stats: Mapping[str, Any]) -> None:
        """Opens the run. ``config`` is the resolved run config."""

    def log(self, metrics: Mapping[str, Any], round: int) -> None:  # noqa: A002 (the FL word)
        """Records one evaluation (a ``metrics.jsonl`` row) at server round ``round``."""

    def log_images(self, images: Mapping[str, str | Path], round: int) -> None:  # noqa: A002
        """Records image files (e.g. PNGs of a report) by name at server round ``round``."""

    def finish(self, summary: Mapping[str, Any] | None, exit_code: int = 0) -> None:
        """Closes the run with the ``summary.json`` content, or ``None`` and a nonzero
        ``exit_code`` when the run failed. Calling it again, or before :meth:`start`, does
        nothing."""


class WandbTracker(Tracker):
    """Logs a run to Weights & Biases.

    The resolved config and the scalar partition statistics (``partition_stats.*``) become the
    W&B config; each evaluation becomes one history row whose x-axis is ``round``
    (``define_metric(step_metric="round")``); the per-client partition statistics become the
    summary table ``partition/clients``; the rest of ``summary.json`` (status, final metrics,
    timing, privacy report, ...) becomes the W&B summary.

    Args:
      mode: ``online``, ``offline`` (written under ``dir``; upload later with ``wandb sync``) or
        ``disabled`` (W&B's own no-op).
      project, entity, group, tags, run_name: as ``wandb.init``'s ``project``, ``entity``,
        ``group``, ``tags`` and ``name``.
      dir: the folder that receives ``wandb/``.
    """

    def __init__(
        self,
        mode: str,
        project: str | None,
        entity: str | None,
        group: str | None,
        tags: list[str],
        dir: str | Path,  # noqa: A002 (wandb.init's name)
        run_name: str | None = None,
    ):
        self.mode = mode
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags)
        self.dir = Path(dir)
        self.run_name = run_name
        self.run = None

    def start(self, config: Mapping[str, Any], partition_stats: Mapping[str, Any]) -> None:
        import wandb  # only a tracked run pays for the import

        self.dir.mkdir(parents=True, exist_ok=True)
        scalars = {k: v for k, v in partition_stats.items() if k not in _PER_CLIENT}
        self.run = wandb.init(
            mode=self.mode,
            project=self.project,
            entity=self.entity,
            group=self.group,
            tags=self.tags,
            dir=str(self.dir),
            name=self.run_name,
            config={**dict(config), "partition_stats": scalars},
            reinit="create_new",  # one W&B run per tracker, whatever ran before in this process
        )
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")
        table = _client_table(partition_stats)
        if table is not None:
            self.run.summary["partition/clients"] = wandb.Table(
                columns=table[0], data=table[1]
            )

    def log(self, metrics: Mapping[str, Any], round: int) -> None:  # noqa: A002
        if self.run is not None:
            self.run.log({**metrics, "round": int(round)})

    def log_images(self, images: Mapping[str, str | Path], round: int) -> None:  # noqa: A002
        if self.run is not None:
            import wandb

            self.run.log({**{k: wandb.Image(str(v)) for k, v in images.items()},
                          "round": int(round)})

    def finish(self, summary: Mapping[str, Any] | None, exit_code: int = 0) -> None:
        if self.run is None:
            return
        if summary is not None:
            self.run.summary.update(
                {k: v for k, v in summary.items() if k not in ("config", "partition_stats")}
            )
        run, self.run = self.run, None
        run.finish(exit_code=exit_code)


def _client_table(stats: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]] | None:
    """Columns and rows of the per-client partition statistics (label counts as ``label_k``)."""
    sizes = stats.get("client_sizes")
    if not sizes:
        return None
    n = len(sizes)
    names = stats.get("client_names") or list(range(n))
    columns, cols = ["client"], [list(names)]
    for key in ("client_sizes", "test_sizes", "total_variation"):
        if isinstance(stats.get(key), list) and len(stats[key]) == n:
            columns.append(key)
            cols.append(stats[key])
    hist = stats.get("label_histograms")
    if isinstance(hist, list) and len(hist) == n and hist and isinstance(hist[0], list):
        for k in range(len(hist[0])):
            columns.append(f"label_{k}")
            cols.append([row[k] for row in hist])
    return columns, [list(row) for row in zip(*cols)]


def build_tracker(
    cfg: Mapping[str, Any] | None,
    run_dir: str | Path,
    group: str | None = None,
    run_name: str | None = None,
) -> Tracker:
    """The tracker for the ``tracking`` config (``None``: disabled).

    Args:
      cfg: ``conf/tracking/*.yaml`` resolved: ``name`` (``disabled`` | ``wandb``) and, for
        ``wandb``, ``mode``, ``project``, ``entity``, ``group``, ``tags``, ``dir``, ``run_name``;
        ``mode``, ``project``, ``entity`` and ``dir`` left null take ``$WANDB_MODE``,
        ``$WANDB_PROJECT``, ``$WANDB_ENTITY``, ``$WANDB_DIR`` where set (W&B's convention).
      run_dir: the run directory; W&B writes under it unless ``dir`` or ``$WANDB_DIR`` is set.
      group, run_name: used where the config leaves ``group`` / ``run_name`` null (the CLI gives
        a sweep's jobs the sweep's name as group and their override string as name).

    Raises:
      ConfigError: an unknown tracker or W&B mode (``tracking.mode`` or ``WANDB_MODE``).
    """
    if not cfg:
        return Tracker()
    name = cfg.get("name", "disabled")
    if name not in TRACKERS:
        raise ConfigError("tracking.name", name, "one of: " + ", ".join(TRACKERS))
    if name == "disabled":
        return Tracker()
    # W&B's precedence: a setting given (config, command line) wins over its environment
    # variable, which wins over the default.
    mode, key = cfg.get("mode"), "tracking.mode"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, key = os.environ["WANDB_MODE"], "WANDB_MODE"
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)  # W&B's older names
    mode = mode or "online"
    if mode not in WANDB_MODES:
        raise ConfigError(key, mode, "one of: " + ", ".join(WANDB_MODES))
    tags = cfg.get("tags") or []
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ConfigError("tracking.tags", tags, "a list of strings, e.g. [baseline,dp]")
    return WandbTracker(
        mode=mode,
        project=cfg.get("project") or os.environ.get("WANDB_PROJECT") or "fedbench",
        entity=cfg.get("entity") or os.environ.get("WANDB_ENTITY"),
        group=cfg.get("group") or group,
        tags=tags,
        dir=cfg.get("dir") or os.environ.get("WANDB_DIR") or run_dir,
        run_name=cfg.get("run_name") or run_name,
    )
