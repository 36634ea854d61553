"""CMC plots written as PNG files, without a display.

The figure is drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
so nothing touches pyplot's global state or the process-wide backend: it is safe in the
CLI, in tests and inside the service's worker threads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from app.errors import UserInputError

__all__ = ["plot_cmc"]


def plot_cmc(
    curves: Mapping[str, Sequence[float] | np.ndarray],
    path: str | PathLike[str],
    title: str | None = None,
    max_rank: int = 20,
) -> Path:
    """Draw one CMC curve per entry of ``curves`` and write a PNG to ``path``.

    Args:
        curves: legend label -> CMC curve as *fractions* in [0, 1], ``curve[r - 1]`` being
            the rank-r matching rate (what
            :func:`app.ml.retrieval.metrics.evaluate_ranking` returns).
        path: output file; missing parent folders are created. Written as PNG whatever the
            suffix.
        title: optional figure title.
        max_rank: last rank shown on the x axis (ranks start at 1); a shorter curve is
            drawn up to its own length.

    Returns:
        The path written, as a :class:`~pathlib.Path`.

    Raises:
        UserInputError: no curves, an empty curve, values outside [0, 1] (percentages passed
            by mistake) or NaN, or ``max_rank < 1``.
    """
    if not curves:
        raise UserInputError("plot_cmc needs at least one curve")
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise UserInputError(f"max_rank must be a positive integer, got {max_rank!r}")
    prepared: list[tuple[str, list[float]]] = []
    for label, curve in curves.items():
        values = [float(v) for v in np.asarray(curve, dtype=np.float64).ravel()[:max_rank]]
        if not values:
            raise UserInputError(f"CMC curve {label!r} is empty")
        if any(math.isnan(v) or v < 0.0 or v > 1.0 + 1e-9 for v in values):
            raise UserInputError(
                f"CMC curve {label!r} must hold fractions in [0, 1] (not percentages)"
            )
        prepared.append((str(label), values))

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(6.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    longest = max(len(values) for _, values in prepared)
    for label, values in prepared:
        ranks = list(range(1, len(values) + 1))
        ax.plot(ranks, [100.0 * v for v in values], marker="o", markersize=3, label=label)
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_xlim(0.5, longest + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0.0, 100.0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, format="png")
    return out
