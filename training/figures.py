"""The sections of a training report: what the model generates (samples, VAE reconstructions and
latent interpolations, from the checkpoint) and how its scores separate normal from anomalous
images (histograms, ROC curves, calibration, from the bundle). Each appends its figures to the
Report, and what it measured to `report.metrics`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from detectors import Detector
from detectors.errors import InputError
from detectors.histogram import LOWER_PERCENTILE, UPPER_PERCENTILE
from detectors.sources import ImageSet

from .plots import plot_calibration, plot_histograms, plot_image_rows, plot_roc


@dataclass
class Plot:
    file: str
    title: str
    caption: str


@dataclass
class Report:
    """What `make_report` wrote: the page, its figures, their numbers, and what it left out."""

    page: Path
    figures: list[Plot] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)


@torch.no_grad()
def generated_figures(
    kind: str,
    model,
    normal: ImageSet,
    out: Path,
    report: Report,
    *,
    classes: list[int] | None,
    n_samples: int,
    seed: int,
    device: torch.device,
    progress: bool,
) -> None:
    """Samples for both kinds (one row per class of a conditional model); reconstructions and
    latent interpolations for the VAE."""
    model = model.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    _, _, height, width = normal.images.shape
    if classes and normal.labels is None:
        msg = "a conditional model needs labelled normal images for its report"
        raise InputError(msg)
    per_row = 8 if classes else min(16, max(8, int(math.sqrt(n_samples))))
    if classes:
        label = torch.tensor(classes, device=device).repeat_interleave(per_row)
        n = len(label)
    else:
        label, n = None, n_samples
    if kind == "pixelcnn":
        samples = model.sample(
            n, height, width, label=label, generator=generator, progress=progress
        )
        how = "drawn pixel by pixel (exact ancestral sampling from the PixelCNN)"
    else:
        samples = model.sample(n, label=label, generator=generator)
        how = "decoded from z ~ N(0, I) (the decoder's mean image)"
    samples = samples.cpu().numpy()
    if classes:
        rows = [
            (f"class {c}", samples[k * per_row : (k + 1) * per_row]) for k, c in enumerate(classes)
        ]
    else:
        rows = [("samples", samples)]
    report.figures.append(
        Plot(
            plot_image_rows(rows, out, "samples.png", per_row),
            "Samples",
            f"{n} images {how}" + (", one row per class." if classes else "."),
        )
    )
    if kind != "vae":
        return

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(normal), size=min(12, len(normal)), replace=False)
    x = torch.from_numpy(normal.images[pick]).to(device)
    y = torch.from_numpy(normal.labels[pick]).to(device) if classes else None
    mu, _ = model.encode(x, y)
    recon = model.decode_images(mu, y).cpu().numpy()
    report.figures.append(
        Plot(
            plot_image_rows(
                [("normal images", normal.images[pick]), ("reconstructions", recon)],
                out,
                "reconstructions.png",
                len(pick),
            ),
            "VAE reconstructions",
            "Held-out normal images and the decoder's mean at z = mu(x).",
        )
    )

    steps, rows = 10, []
    for _ in range(min(6, len(normal) // 2)):
        a, b = _pair(normal, rng, same_class=bool(classes))
        pair = torch.from_numpy(normal.images[[a, b]]).to(device)
        pair_label = torch.from_numpy(normal.labels[[a, b]]).to(device) if classes else None
        z, _ = model.encode(pair, pair_label)
        t = torch.linspace(0, 1, steps, device=device)[:, None]
        path = (1 - t) * z[0] + t * z[1]  # (steps, latent)
        path_label = pair_label[:1].expand(steps) if classes else None
        decoded = model.decode_images(path, path_label).cpu().numpy()
        row = np.concatenate([normal.images[[a]], decoded, normal.images[[b]]])
        rows.append((f"images {a} -> {b}", row))
    if rows:
        report.figures.append(
            Plot(
                plot_image_rows(rows, out, "interpolation.png", steps + 2),
                "VAE latent interpolation",
                "Between pairs of normal images: the first and last image of a row are the real "
                f"ones, between them the decoded z = (1-t) mu(a) + t mu(b) for {steps} values of t"
                + (" (pairs of one class, decoded with that label)." if classes else "."),
            )
        )


def _pair(data: ImageSet, rng, *, same_class: bool) -> tuple[int, int]:
    a = int(rng.integers(len(data)))
    candidates = (
        np.flatnonzero(data.labels == data.labels[a]) if same_class else np.arange(len(data))
    )
    candidates = candidates[candidates != a]
    return a, int(rng.choice(candidates)) if len(candidates) else a


# --- scores --------------------------------------------------------------------------------------
def _scores(
    detector: Detector, data: ImageSet, labels, desc: str, progress: bool
) -> dict[str, np.ndarray]:
    with tqdm(total=len(data), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        scores, _ = detector.raw_scores_batched(data.images, labels=labels, on_batch=bar.update)
    return scores


def _wrong_labels(labels: np.ndarray, classes: list[int], seed: int) -> np.ndarray:
    """Each label replaced by another of `classes`, at random."""
    rng = np.random.default_rng(seed)
    classes = np.asarray(classes)
    position = np.searchsorted(classes, labels)
    shift = rng.integers(1, len(classes), size=len(labels))
    return classes[(position + shift) % len(classes)]


def score_figures(
    detector: Detector,
    normal: ImageSet,
    anomalous: ImageSet | None,
    out: Path,
    report: Report,
    *,
    alpha: float,
    seed: int,
    progress: bool,
) -> None:
    conditional = detector.conditional
    anomalous_labels, anomalous_what = None, None
    if conditional:
        if normal.labels is None:
            msg = "a conditional bundle scores images with their labels; the normal data has none"
            raise InputError(msg)
        if anomalous is None:
            anomalous = normal
            anomalous_labels = _wrong_labels(normal.labels, detector.classes, seed)
            anomalous_what = "the normal images, each paired with a wrong label"
        else:
            anomalous_labels = anomalous.labels
    normal_scores = _scores(
        detector, normal, normal.labels if conditional else None, "scoring normal", progress
    )
    anomalous_scores = None
    if anomalous is not None and len(anomalous):
        anomalous_scores = _scores(
            detector, anomalous, anomalous_labels, "scoring anomalous", progress
        )
        anomalous_what = anomalous_what or f"{len(anomalous)} images from {anomalous.source}"
    thresholds = {name: detector.threshold(name, alpha) for name in detector.score_names}
    report.metrics.update(
        alpha=alpha,
        n_normal=len(normal),
        n_anomalous=0 if anomalous_scores is None else len(anomalous),
        anomalous=anomalous_what,
        thresholds=thresholds,
    )
    histograms, limits = plot_histograms(
        normal_scores, anomalous_scores, thresholds, detector.default_score, alpha, out
    )
    report.metrics["histogram_limits"] = limits
    beyond = sum(sum(s["below"].values()) + sum(s["above"].values()) for s in limits.values())
    report.figures.append(
        Plot(
            histograms,
            "Scores",
            f"Raw scores of {len(normal)} normal images"
            + (f" and of {anomalous_what}" if anomalous_scores else "")
            + f"; the dashed line is each score's threshold at alpha = {alpha:g} "
            "(anomaly iff score > threshold). Each axis spans the "
            f"{LOWER_PERCENTILE:g}th to {UPPER_PERCENTILE:g}th percentile of that score's values "
            "(normal and anomalous together); values beyond it are drawn in the edge bins and "
            f"counted in the corners ({beyond} in all; report.json has them per score).",
        )
    )
    if anomalous_scores is not None:
        name, aurocs = plot_roc(normal_scores, anomalous_scores, out)
        report.metrics["auroc"] = aurocs
        report.metrics["tpr_at_alpha"] = {
            n: float(np.mean(anomalous_scores[n] > thresholds[n])) for n in anomalous_scores
        }
        report.figures.append(Plot(name, "ROC curves", "Normal against anomalous, every score."))
    else:
        report.omitted.append(
            "ROC curves: no anomalous images (give --anomalous SPEC, or labelled "
            "data with normal classes)"
        )
    references = {n: detector.reference(n) for n in normal_scores}
    name, measured = plot_calibration(normal_scores, references, alpha, out)
    report.metrics["fpr_at_alpha"] = measured
    report.figures.append(
        Plot(
            name,
            "Calibration",
            "Share of the normal images flagged (p-value <= alpha) against alpha, log-log "
            "(a share of 0 is drawn at the thin line). Conformal p-values promise at most "
            "alpha on normal images the model has not seen (calibrated on "
            f"{detector.spec.calibration.n_reference} held-out images); if "
            "these images were used in training, the measured rate is optimistic.",
        )
    )
