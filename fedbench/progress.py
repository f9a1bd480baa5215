"""What a run prints while it goes: one line per evaluation, a table at the end."""

from __future__ import annotations

from typing import Any

from fedbench.metric_names import METRIC_KEYS


def _print_progress(metrics: dict[str, Any], rounds: int, rate: float | None) -> None:
    speed = f"{rate:8.1f} rounds/s" if rate else "   (compiling)"
    eps = f" | epsilon {metrics['epsilon']:.3f}" if "epsilon" in metrics else ""
    name, short = ("cindex", "C-index") if "test_cindex" in metrics else ("accuracy", "acc")
    # Without privacy.release_metrics the training loss and client metrics are not shown.
    train = f" | train loss {metrics['train_loss']:.4f}" if "train_loss" in metrics else ""
    p10 = metrics.get(f"client_{name}_p10")
    client = f" | client {short} p10 {p10:.4f}" if p10 is not None else ""
    print(
        f"round {metrics['round']:>5}/{rounds} | test {short} {metrics['test_' + name]:.4f}"
        f"{train}{client}{eps} | {speed}",
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
