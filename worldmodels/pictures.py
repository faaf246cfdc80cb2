"""Pictures people look at: frame grids (reconstructions) and training curves, as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import imageio.v3 as iio
import numpy as np

from worldmodels.atomic import write_atomic, write_bytes_atomic


def frame_grid(*rows: np.ndarray, scale: int = 2, gap: int = 2) -> np.ndarray:
    """Rows of frames, one above the other: uint8 (N, H, W, 3) each -> one image.

    Frames are enlarged ``scale`` times (nearest neighbour, so pixels stay honest) and
    separated by white lines ``gap`` pixels wide.
    """
    if any(r.shape != rows[0].shape for r in rows):
        raise ValueError(f"rows differ: {[r.shape for r in rows]}")
    n, h, w, _ = rows[0].shape
    H, W = h * scale, w * scale
    out = np.full((len(rows) * (H + gap) + gap, n * W + (n + 1) * gap, 3), 255, np.uint8)
    for row, frames in enumerate(rows):
        for i, frame in enumerate(frames):
            big = cv2.resize(frame, (W, H), interpolation=cv2.INTER_NEAREST)
            y, x = gap + row * (H + gap), gap + i * (W + gap)
            out[y : y + H, x : x + W] = big
    return out


def recon_grid(top: np.ndarray, bottom: np.ndarray, scale: int = 2, gap: int = 2) -> np.ndarray:
    """Two rows of frames, ``top`` over ``bottom`` (see :func:`frame_grid`)."""
    return frame_grid(top, bottom, scale=scale, gap=gap)


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically (temp name, then rename)."""
    write_bytes_atomic(path, iio.imwrite("<bytes>", image, extension=".png"))


def plot_curves(path: Path, series: dict[str, tuple[list[float], list[float]]], title: str,
                xlabel: str, ylabel: str, band: tuple[list[float], list[float]] | None = None,
                hlines: dict[str, float] | None = None,
                styles: dict[str, dict[str, Any]] | None = None, logy: bool = False) -> None:
    """Line plot of named (x, y) series, an optional shaded band (low, high) under the first
    series' x, and labelled horizontal reference lines; written atomically as PNG.
    ``styles``: matplotlib keywords for some series by name (colour, marker, ...);
    ``logy`` for a logarithmic y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    first_x = None
    for name, (x, y) in series.items():
        style = {"linewidth": 1.6, "marker": "o" if len(x) <= 30 else None, "markersize": 4,
                 **(styles or {}).get(name, {})}
        ax.plot(x, y, label=name, **style)
        first_x = x if first_x is None else first_x
    if band is not None and first_x is not None:
        ax.fill_between(first_x, band[0], band[1], alpha=0.15, label="worst to best")
    if logy:
        ax.set_yscale("log")
    for name, value in (hlines or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="grey")
        ax.annotate(name, (ax.get_xlim()[0], value), fontsize=8, color="grey",
                    xytext=(4, 3), textcoords="offset points")
    _save_plot(fig, ax, path, title, xlabel, ylabel)


ErrorBars = list[float] | tuple[list[float], list[float]]


def plot_errorbars(path: Path, series: dict[str, tuple[list[float], list[float], ErrorBars]],
                   title: str, xlabel: str, ylabel: str, logx: bool = False,
                   xticks: list[float] | None = None) -> None:
    """Named (x, y, error) series as lines with error bars, written atomically as PNG:
    y ± error, or from y - lower to y + upper when the error is a (lower, upper) pair of
    lists; ``logx`` for a logarithmic x axis, ``xticks`` to label exactly those x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, label=name, linewidth=1.6, marker="o", markersize=4,
                    capsize=3)
    if logx:
        ax.set_xscale("log")
    if xticks:
        ax.set_xticks(xticks, [f"{x:g}" for x in xticks])
        ax.minorticks_off()
    _save_plot(fig, ax, path, title, xlabel, ylabel)


def plot_points(path: Path, series: dict[str, tuple[list[float], list[float]]], title: str,
                xlabel: str, ylabel: str, diagonal: bool = False) -> None:
    """Named (x, y) point clouds, one marker colour each, written atomically as PNG;
    ``diagonal`` draws y = x (where the two axes measure the same thing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (x, y) in series.items():
        ax.scatter(x, y, label=name, s=22, alpha=0.8)
    if diagonal:
        low, high = (min(ax.get_xlim()[0], ax.get_ylim()[0]),
                     max(ax.get_xlim()[1], ax.get_ylim()[1]))
        ax.plot([low, high], [low, high], linestyle="--", linewidth=1, color="grey",
                label="real = dream")
    _save_plot(fig, ax, path, title, xlabel, ylabel)


def _save_plot(fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str) -> None:
    """Title, labels, grid and legend, then the PNG written atomically; the figure closed."""
    import matplotlib.pyplot as plt

    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, format="png"))
    finally:
        plt.close(fig)
