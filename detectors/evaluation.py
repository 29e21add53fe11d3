"""Detection quality of a bundle on labelled images: AUROC, AUPRC, FPR at 95% TPR, FPR at alpha."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .detector import Detector


def detection_metrics(normal_scores: np.ndarray, anomalous_scores: np.ndarray) -> dict[str, float]:
    """Threshold-free metrics of raw scores (higher = more anomalous; anomalies are positives)."""
    y = np.r_[np.zeros(len(normal_scores)), np.ones(len(anomalous_scores))]
    s = np.r_[normal_scores, anomalous_scores]
    fpr, tpr, _ = roc_curve(y, s)
    return {
        "auroc": float(roc_auc_score(y, s)),
        "auprc": float(average_precision_score(y, s)),
        "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }


def evaluate(
    detector: Detector,
    normal: np.ndarray,
    anomalous: np.ndarray | None = None,
    *,
    alpha: float | None = None,
    batch_size: int = 256,
    normal_labels=None,
    anomalous_labels=None,
    on_batch: Callable[[int], None] | None = None,
) -> dict:
    """Every score of `detector` on normal (and anomalous) images, with the rate flagged at alpha.
    A conditional detector needs the labels of both sets. `on_batch(n)` follows the scoring (a
    progress bar), called with the number of images of each batch scored."""
    alpha = detector.default_alpha if alpha is None else alpha
    normal_scores, _ = detector.raw_scores_batched(
        normal, labels=normal_labels, batch_size=batch_size, on_batch=on_batch
    )
    anomalous_scores = None
    if anomalous is not None and len(anomalous):
        anomalous_scores, _ = detector.raw_scores_batched(
            anomalous, labels=anomalous_labels, batch_size=batch_size, on_batch=on_batch
        )
    rows = []
    for name in detector.score_names:
        threshold = detector.threshold(name, alpha)
        row = {
            "score": name,
            "default": name == detector.default_score,
            "fpr_at_alpha": float(np.mean(normal_scores[name] > threshold)),
        }
        if anomalous_scores is not None:
            row["tpr_at_alpha"] = float(np.mean(anomalous_scores[name] > threshold))
            row.update(detection_metrics(normal_scores[name], anomalous_scores[name]))
        rows.append(row)
    return {
        "alpha": alpha,
        "n_normal": len(normal),
        "n_anomalous": 0 if anomalous_scores is None else len(anomalous),
        "normal_bits_per_dim": float(np.mean(normal_scores[detector.spec.likelihood_score])),
        "rows": rows,
    }


def format_table(report: dict) -> str:
    """A plain-text table of an `evaluate` report."""
    columns = ["score", "auroc", "auprc", "fpr_at_95_tpr", "fpr_at_alpha", "tpr_at_alpha"]
    present = [c for c in columns if any(c in row for row in report["rows"])]
    lines = [
        f"normal bits/dim {report['normal_bits_per_dim']:.3f} "
        f"(n_normal={report['n_normal']}, n_anomalous={report['n_anomalous']}, "
        f"alpha={report['alpha']})"
    ]
    widths = [max(len(c), 18 if c == "score" else 8) for c in present]
    lines.append("  ".join(c.ljust(w) for c, w in zip(present, widths, strict=True)))
    for row in report["rows"]:
        cells = []
        for c, w in zip(present, widths, strict=True):
            value = row.get(c, "")
            text = (
                (value + (" *" if row["default"] else ""))
                if c == "score"
                else (f"{value:.3f}" if isinstance(value, float) else str(value))
            )
            cells.append(text.ljust(w))
        lines.append("  ".join(cells))
    lines.append("* default score")
    return "\n".join(lines)
