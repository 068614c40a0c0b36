"""Plots (matplotlib, headless): the streaming RMSE curve against the batch ALS line."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402


def rmse_curve(path: str | Path, curves: dict[str, tuple[list[int], list[float]]],
               baselines: dict[str, float] | None = None, title: str = "Holdout RMSE per factor version",
               xlabel: str = "factor version (batches applied)") -> Path:
    """Write a PNG: one line per model (x = version, y = RMSE), one dashed line per baseline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, label=name, linewidth=1.6)
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle="--", color=f"C{len(curves) + i}", label=f"{name} ({value:.4f})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("RMSE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
