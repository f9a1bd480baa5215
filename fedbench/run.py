"""One configured experiment, from config to result files.

:func:`run_experiment` is the single entry point used by the CLI, tests and notebooks. It checks
every setting before loading data or compiling anything (:func:`validate`), then runs the rounds
in compiled blocks of ``eval_every`` rounds, evaluating and rewriting ``metrics.jsonl`` after each
block, and finally writes ``summary.json``. Both files are replaced atomically.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.algorithm import build_algorithm
from fedbench.dataset import load_dataset
from fedbench.dataset.pipeline import build_federated
from fedbench.errors import BufferOverflowError, ConfigError
from fedbench.model import build_model
from fedbench.results import (
    CompileCounter,
    device_info,
    package_versions,
    write_json,
    write_jsonl,
)
from fedbench.simulator import CLIENT_AXES, Settings, Simulator, Stragglers

METRIC_KEYS = (
    "round",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "client_accuracy_mean",
    "client_accuracy_p10",
)


def _integer(cfg: Mapping[str, Any], key: str, minimum: int, what: str | None = None) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, value, what or f"an integer >= {minimum}")
    return value


def _positive_float(cfg: Mapping[str, Any], key: str) -> float:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "a number > 0")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(key, value, "a finite number > 0")
    return float(value)


def validate(cfg: Mapping[str, Any]) -> Settings:
    """Checks the top-level keys and returns the simulator :class:`Settings`.

    Group settings (dataset, partition, model, algorithm) are checked by their own builders,
    which :func:`run_experiment` calls before any training.

    Raises:
      ConfigError: naming the key, the value and what is allowed.
    """
    num_clients = _integer(cfg, "num_clients", 1)
    _integer(
        cfg,
        "clients_per_round",
        1,
        f"an integer in [1, num_clients={num_clients}]",
    )
    if cfg["clients_per_round"] > num_clients:
        raise ConfigError(
            "clients_per_round",
            cfg["clients_per_round"],
            f"<= num_clients={num_clients} (clients are sampled without replacement)",
        )
    _integer(cfg, "rounds", 1)
    _integer(cfg, "eval_every", 1)
    _integer(cfg, "local_epochs", 1)
    _integer(cfg, "batch_size", 1)
    _integer(cfg, "seed", 0, "a non-negative integer")
    _integer(cfg, "unroll", 1)
    lr = _positive_float(cfg, "lr")
    axis = cfg.get("client_axis", "auto")
    if axis not in CLIENT_AXES:
        raise ConfigError("client_axis", axis, "one of: " + ", ".join(CLIENT_AXES))
    return Settings(
        clients_per_round=cfg["clients_per_round"],
        local_epochs=cfg["local_epochs"],
        batch_size=cfg["batch_size"],
        lr=lr,
        client_axis=axis,
        unroll=cfg["unroll"],
    )


def build_stragglers(
    cfg: Mapping[str, Any] | None, settings: Settings, kind: str
) -> Stragglers | None:
    """Validates the ``stragglers`` settings (Li et al. 2020, Sec. 5.2).

    Raises:
      ConfigError: fraction outside [0, 1], unknown policy, ``partial`` with one local epoch,
        stragglers on the centralized/local baselines.
    """
    if not cfg:
        return None
    fraction = cfg.get("fraction", 0.0)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ConfigError("stragglers.fraction", fraction, "a number in [0, 1]")
    policy = cfg.get("policy", "drop")
    if policy not in ("drop", "partial"):
        raise ConfigError("stragglers.policy", policy, "one of: drop, partial")
    if fraction == 0:
        return None
    if kind != "federated":
        raise ConfigError(
            "stragglers.fraction", fraction,
            "0 for centralized, local and fedbuff (stragglers apply to synchronous rounds; "
            "fedbuff models slow sites with site_speed)",
        )
    if policy == "partial" and settings.local_epochs < 2:
        raise ConfigError(
            "stragglers.policy", policy,
            f"drop when local_epochs={settings.local_epochs} (partial stragglers run 1..E-1 epochs)",
        )
    return Stragglers(float(fraction), policy)


def _print_progress(metrics: dict[str, Any], rounds: int, rate: float | None) -> None:
    speed = f"{rate:8.1f} rounds/s" if rate else "   (compiling)"
    eps = f" | epsilon {metrics['epsilon']:.3f}" if "epsilon" in metrics else ""
    print(
        f"round {metrics['round']:>5}/{rounds} | test acc {metrics['test_accuracy']:.4f} | "
        f"train loss {metrics['train_loss']:.4f} | client acc p10 "
        f"{metrics['client_accuracy_p10']:.4f}{eps} | {speed}",
        flush=True,
    )


def _print_table(final: dict[str, Any], timing: dict[str, Any]) -> None:
    rows = [(k, final[k]) for k in METRIC_KEYS + ("epsilon",) if k in final] + [
        ("compile_seconds", timing["compile_seconds"]),
        ("run_seconds", timing["run_seconds"]),
        ("rounds_per_second", timing["rounds_per_second"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 14))
    for key, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {text:>10}")
    print("-" * (width + 14), flush=True)


def run_experiment(
    cfg: Mapping[str, Any],
    out_dir: str | Path,
    progress: Callable[[dict[str, Any], int, float | None], None] | None = _print_progress,
) -> dict[str, Any]:
    """Runs one experiment and writes ``metrics.jsonl`` and ``summary.json`` into ``out_dir``.

    Args:
      cfg: the resolved config as plain containers (see ``conf/config.yaml`` for the keys).
      out_dir: the run directory.
      progress: called after every evaluation with ``(metrics, rounds, rounds_per_second)``;
        ``None`` for silence.

    Returns:
      The summary written to ``summary.json``.

    Raises:
      ConfigError: for any bad setting, before training starts.
    """
    out_dir = Path(out_dir)
    settings = validate(cfg)
    algorithm = build_algorithm(
        {**cfg["algorithm"], "site_speed": cfg.get("site_speed", 0.0)}, cfg["clients_per_round"]
    )
    if algorithm.kind == "async" and algorithm.concurrency > cfg["num_clients"]:
        raise ConfigError(
            "algorithm.concurrency", algorithm.concurrency, f"<= num_clients={cfg['num_clients']}"
        )
    raw = load_dataset(cfg["dataset"])
    data, partition_stats = build_federated(
        raw,
        cfg["partition"],
        cfg["num_clients"],
        seed=cfg["seed"] if cfg["partition"].get("seed") is None else cfg["partition"]["seed"],
        test_fraction=float(cfg["dataset"].get("test_fraction", 0.2)),
        normalization=cfg["dataset"].get("normalize"),
    )
    model = build_model(cfg["model"], data.feature_shape, data.num_classes)
    from fedbench.privacy.plan import build_privacy  # imports dp-accounting only when needed

    if progress and cfg.get("privacy", {}).get("target_epsilon") is not None:
        print("fedbench: calibrating the noise multiplier to privacy.target_epsilon", flush=True)
    privacy = build_privacy(
        cfg.get("privacy"),
        algorithm_kind=algorithm.kind,
        num_clients=cfg["num_clients"],
        clients_per_round=settings.clients_per_round,
        rounds=cfg["rounds"],
        local_epochs=1 if algorithm.full_batch else settings.local_epochs,
        batch_size=data.max_train if algorithm.full_batch else settings.batch_size,
        client_sizes=np.asarray(data.train_counts),
    )
    sim = Simulator(
        model, algorithm, data, settings, seed=cfg["seed"],
        privacy=privacy.mechanism if privacy else None,
        stragglers=build_stragglers(cfg.get("stragglers"), settings, algorithm.kind),
    )

    def evaluate(state) -> dict[str, Any]:
        metrics = sim.evaluate(state)
        if privacy is not None:
            if int(state.overflow):
                raise BufferOverflowError(
                    f"{int(state.overflow)} Poisson-sampled cohorts/batches exceeded their "
                    "buffer; the run is stopped instead of dropping sampled units"
                )
            spent = privacy.report(int(state.round), np.asarray(state.participation))
            metrics["epsilon"] = spent["epsilon"]
        return metrics

    rounds, eval_every = cfg["rounds"], cfg["eval_every"]
    compile_before, _ = CompileCounter.snapshot()
    state = sim.init()
    history = [evaluate(state)]
    if progress:
        progress(history[-1], rounds, None)
    run_wall = 0.0  # wall time inside the round loop, compilation excluded
    status = "completed"
    while int(state.round) < rounds:
        block = min(eval_every, rounds - int(state.round))
        compiled_before, _ = CompileCounter.snapshot()
        start = time.perf_counter()
        state = jax.block_until_ready(sim.run(state, block))
        run_wall += time.perf_counter() - start
        run_wall -= CompileCounter.snapshot()[0] - compiled_before
        history.append(evaluate(state))
        write_jsonl(out_dir / "metrics.jsonl", history)
        if progress:
            progress(history[-1], rounds, int(state.round) / run_wall if run_wall > 0 else None)
        finite_params = all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(state.params))
        if not (finite_params and math.isfinite(history[-1]["train_loss"])):
            status = "diverged"
            print(
                f"fedbench: training diverged by round {int(state.round)} (parameters or training "
                "loss not finite); stopping. Lower lr (or algorithm.server_lr), or for DP raise "
                "the number of clients per round or privacy.target_epsilon.",
                file=sys.stderr,
                flush=True,
            )
            break
    write_jsonl(out_dir / "metrics.jsonl", history)
    # Tracing, lowering and XLA compilation of the round loop and of evaluation.
    compile_seconds = CompileCounter.snapshot()[0] - compile_before
    run_seconds = max(run_wall, 1e-9)
    timing = {
        "compile_seconds": compile_seconds,
        "run_seconds": run_seconds,
        "rounds_per_second": int(state.round) / run_seconds,
        "round_program_traces": sim.trace_count,
    }
    summary = {
        "status": status,
        "final": history[-1],
        "config": dict(cfg),
        "timing": timing,
        "partition_stats": partition_stats,
        "privacy": (
            privacy.report(int(state.round), np.asarray(state.participation))
            if privacy is not None
            else None
        ),
        "client_axis": sim.client_axis,
        "versions": package_versions(),
        "device": device_info(),
        "python": sys.version.split()[0],
    }
    write_json(out_dir / "summary.json", summary)
    if progress:
        _print_table(history[-1], timing)
    return summary
