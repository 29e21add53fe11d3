"""The training report's figures, drawn with matplotlib's Agg backend (no pyplot, no global state,
no window): arrays in, one PNG file out, its name returned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from detectors.calibration import conformal_p_values
from detectors.histogram import HistogramLimits, robust_limits

ALPHAS = np.geomspace(0.001, 0.5, 40)


def _grid(images: np.ndarray, columns: int) -> np.ndarray:
    """uint8 (N, C, H, W) -> one (rows*(H+1)-1, columns*(W+1)-1[, C]) image with 1-pixel gaps."""
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + 1) - 1, columns * (w + 1) - 1, c), 255, np.uint8)
    for k in range(n):
        r, q = divmod(k, columns)
        top, left = r * (h + 1), q * (w + 1)
        grid[top : top + h, left : left + w] = images[k].transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def _show_grid(ax, images: np.ndarray, columns: int) -> None:
    ax.imshow(_grid(images, columns), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()


def _figure(figsize: tuple[float, float]) -> Figure:
    """A figure drawn by the Agg backend: no pyplot, no global state, no window."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: Path, name: str) -> str:
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    return name


def plot_history(
    epochs: list[int], train: list[float], validation: list[float], ylabel: str, out: Path
) -> str:
    """The training objective per epoch on the training batches and the validation split."""
    fig = _figure((6, 3.6))
    ax = fig.subplots()
    ax.plot(epochs, train, "o-", label="training")
    ax.plot(epochs, validation, "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out, "history.png")


def plot_image_rows(rows: list[tuple[str, np.ndarray]], out: Path, name: str, columns: int) -> str:
    """One titled grid per entry of `rows` (label, uint8 images (N, C, H, W)), stacked."""
    height = 0.6 * len(rows) + 0.5 + sum(math.ceil(len(im) / columns) * 0.5 for _, im in rows)
    fig = _figure((columns * 0.5 + 1, height))
    axes = fig.subplots(len(rows), 1, squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        _show_grid(ax, images, columns)
        ax.set_title(label, fontsize=9, loc="left")
    return _save(fig, out, name)


def _outside_note(ax, limits: HistogramLimits, samples: dict[str, np.ndarray]) -> None:
    """Write in the plot's corners how many values of each sample lie beyond each limit."""
    counts = {label: limits.outside(values) for label, values in samples.items()}
    for side, x, align in ((0, 0.01, "left"), (1, 0.99, "right")):
        parts = [f"{c[side]} {label}" for label, c in counts.items() if c[side]]
        if parts:
            arrow = "< " if side == 0 else ""
            text = f"{arrow}{', '.join(parts)} {'below' if side == 0 else 'above'}"
            ax.text(
                x,
                0.97,
                text + ("" if side == 0 else " >"),
                transform=ax.transAxes,
                ha=align,
                va="top",
                fontsize=7,
                color="0.3",
            )


def _threshold_line(ax, threshold: float, limits: HistogramLimits, alpha: float) -> None:
    """The threshold as a dashed line; one beyond the axis is drawn on its edge and says so."""
    if not math.isfinite(threshold):
        ax.plot([], [], color="k", ls="--", lw=1, label=f"threshold: none at alpha={alpha:g}")
        return
    label = f"threshold {threshold:.4g} (alpha={alpha:g})"
    x = min(max(threshold, limits.low), limits.high)
    if x != threshold:
        label += ", beyond the axis"
    ax.axvline(x, color="k", ls="--", lw=1, label=label)


def plot_histograms(
    normal: dict, anomalous: dict | None, thresholds: dict, default: str, alpha: float, out: Path
) -> tuple[str, dict]:
    """One histogram per score over robust limits (detectors.histogram): values beyond them are
    drawn in the edge bins and counted in the corners. Returns the file and, per score, the limits
    and how many normal and anomalous values each cut off."""
    names = list(normal)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = _figure((4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    stated = {}
    for ax, name in zip(axes.flat, names, strict=False):
        samples = {"normal": normal[name]} | ({"anomalous": anomalous[name]} if anomalous else {})
        limits = robust_limits(*samples.values())
        for label, values in samples.items():
            ax.hist(limits.clip(values), bins=limits.bins(), alpha=0.6, density=True, label=label)
        _threshold_line(ax, thresholds[name], limits, alpha)
        _outside_note(ax, limits, samples)
        stated[name] = limits.to_json(samples)
        ax.set_xlim(limits.low, limits.high)
        ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the counts in the corners
        ax.set_title(name + (" (default)" if name == default else ""), fontsize=10)
        ax.set_xlabel("raw score (higher = more anomalous)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, out, "scores.png"), stated


def plot_roc(normal: dict, anomalous: dict, out: Path) -> tuple[str, dict]:
    fig = _figure((4.6, 4.4))
    ax = fig.subplots()
    aurocs = {}
    n_normal, n_anomalous = len(next(iter(normal.values()))), len(next(iter(anomalous.values())))
    y = np.r_[np.zeros(n_normal), np.ones(n_anomalous)]
    for name in normal:
        s = np.r_[normal[name], anomalous[name]]
        fpr, tpr, _ = roc_curve(y, s)
        aurocs[name] = float(roc_auc_score(y, s))
        ax.plot(fpr, tpr, label=f"{name} (AUROC {aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, out, "roc.png"), aurocs


def plot_calibration(
    normal: dict, references: dict, default_alpha: float, out: Path
) -> tuple[str, dict]:
    """Measured FPR on normal images against alpha: conformal p-values promise FPR <= alpha."""
    n = len(next(iter(normal.values())))
    fig = _figure((4.6, 4.4))
    ax = fig.subplots()
    floor = 0.5 / n  # a measured rate of 0 is drawn here, on the log scale
    band = 2 * np.sqrt(ALPHAS * (1 - ALPHAS) / n)
    ax.fill_between(
        ALPHAS,
        np.maximum(ALPHAS - band, floor),
        ALPHAS + band,
        color="grey",
        alpha=0.2,
        label="alpha +- 2 s.e.",
    )
    ax.axhline(floor, color="grey", lw=0.5)
    ax.plot(ALPHAS, ALPHAS, color="grey", ls=":", lw=1)
    measured = {}
    for name, scores in normal.items():
        p = conformal_p_values(scores, references[name])
        fpr = np.array([np.mean(p <= a) for a in ALPHAS])
        ax.plot(ALPHAS, np.maximum(fpr, floor), label=name, lw=1.2)
        measured[name] = float(np.mean(p <= default_alpha))
    ax.axvline(default_alpha, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("alpha (target false-positive rate)")
    ax.set_ylabel(f"measured false-positive rate (n={n})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out, "calibration.png"), measured
