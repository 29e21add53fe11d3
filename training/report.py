"""`normalcy report`: one HTML page with PNG figures about a trained model.

    bits/dim per epoch (training, validation)    the checkpoint or the bundle's metadata
    samples (PixelCNN pixel by pixel; VAE prior) the checkpoint (`<stem>.pt` beside a bundle)
    VAE reconstructions, latent interpolations   the checkpoint
    score histograms with thresholds, ROC curves the bundle, on normal (and anomalous) images
    calibration: measured FPR against alpha      the bundle's conformal p-values

Whatever is missing (no checkpoint beside a bundle, no anomalous images) is left out, and the page
says so. A conditional model is sampled class by class and scored with each image's own label; its
anomalies, unless given, are the normal images paired with a wrong label.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from detectors import Detector
from detectors.bundle import Bundle
from detectors.calibration import conformal_p_values
from detectors.datasets import ImageSet
from detectors.errors import InputError

from .train import model_from_checkpoint, resolve_device

ALPHAS = np.geomspace(0.001, 0.5, 40)


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


def find_artifacts(source: str | Path) -> tuple[Path | None, Path | None]:
    """(bundle, checkpoint) for a bundle `X.onnx` or a checkpoint `X.pt`: each looks for the other
    beside it. At least one must exist."""
    source = Path(source)
    if not source.exists():
        msg = f"{source}: no such file (give a bundle .onnx or a checkpoint .pt)"
        raise InputError(msg)
    if source.suffix == ".pt":
        bundle = source.with_suffix(".onnx")
        return (bundle if bundle.exists() else None), source
    checkpoint = source.with_suffix(".pt")
    return source, (checkpoint if checkpoint.exists() else None)


# --- figures -------------------------------------------------------------------------------------
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


def plot_history(history: list[dict], out: Path) -> str:
    epochs = [row["epoch"] for row in history]
    fig = _figure((6, 3.6))
    ax = fig.subplots()
    ax.plot(epochs, [row["train_bits_per_dim"] for row in history], "o-", label="training")
    ax.plot(epochs, [row["validation_bits_per_dim"] for row in history], "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits/dim")
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


def plot_histograms(
    normal: dict, anomalous: dict | None, thresholds: dict, default: str, alpha: float, out: Path
) -> str:
    names = list(normal)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig = _figure((4.2 * columns, 3.2 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        values = [normal[name]] + ([anomalous[name]] if anomalous else [])
        finite = np.concatenate(values)
        bins = np.linspace(finite.min(), finite.max(), 41)
        ax.hist(normal[name], bins=bins, alpha=0.6, density=True, label="normal")
        if anomalous:
            ax.hist(anomalous[name], bins=bins, alpha=0.6, density=True, label="anomalous")
        if math.isfinite(thresholds[name]):
            ax.axvline(
                thresholds[name], color="k", ls="--", lw=1, label=f"threshold (alpha={alpha:g})"
            )
        ax.set_title(name + (" (default)" if name == default else ""), fontsize=10)
        ax.set_xlabel("raw score (higher = more anomalous)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, out, "scores.png")


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


# --- model side ----------------------------------------------------------------------------------
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
    detector: Detector, data: ImageSet, labels, desc: str, progress: bool, batch_size: int = 256
) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {name: [] for name in detector.score_names}
    starts = range(0, len(data), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        batch_labels = None if labels is None else labels[start : start + batch_size]
        values = detector.raw_scores(data.images[start : start + batch_size], labels=batch_labels)
        for name in parts:
            parts[name].append(values[name])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


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
    report.figures.append(
        Plot(
            plot_histograms(
                normal_scores, anomalous_scores, thresholds, detector.default_score, alpha, out
            ),
            "Scores",
            f"Raw scores of {len(normal)} normal images"
            + (f" and of {anomalous_what}" if anomalous_scores else "")
            + f"; the dashed line is each score's threshold at alpha = {alpha:g} "
            "(anomaly iff score > threshold).",
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
            f"{detector.metadata['calibration'].get('n_reference')} held-out images); if "
            "these images were used in training, the measured rate is optimistic.",
        )
    )


# --- the page ------------------------------------------------------------------------------------
def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def _metric_table(metrics: dict) -> str:
    names = list(metrics.get("fpr_at_alpha", {}))
    if not names:
        return ""
    header = "<tr><th>score</th><th>FPR at alpha</th><th>TPR at alpha</th><th>AUROC</th></tr>"
    body = ""
    for name in names:

        def cell(key, name=name):
            value = metrics.get(key, {}).get(name)
            return "" if value is None else f"{value:.3f}"

        body += (
            f"<tr><td>{html.escape(name)}</td><td>{cell('fpr_at_alpha')}</td>"
            f"<td>{cell('tpr_at_alpha')}</td><td>{cell('auroc')}</td></tr>"
        )
    return f"<table>{header}{body}</table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:0.9em}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:0.9em}"""


def write_page(report: Report, title: str, facts: list[tuple[str, str]]) -> None:
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        _table(facts),
    ]
    metrics = _metric_table(report.metrics)
    if metrics:
        parts.append(f"<h2>Detection at alpha = {report.metrics['alpha']:g}</h2>{metrics}")
    for figure in report.figures:
        parts.append(
            f"<figure><h2>{html.escape(figure.title)}</h2><img src='{figure.file}' "
            f"alt='{html.escape(figure.title)}'><figcaption>{html.escape(figure.caption)}"
            "</figcaption></figure>"
        )
    if report.omitted:
        items = "".join(f"<li>{html.escape(text)}</li>" for text in report.omitted)
        parts.append(f"<h2>Left out</h2><ul>{items}</ul>")
    parts.append("</body></html>")
    report.page.write_text("\n".join(parts))


def make_report(
    source: str | Path,
    normal: ImageSet,
    out: str | Path,
    *,
    anomalous: ImageSet | None = None,
    alpha: float | None = None,
    n_samples: int = 64,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> Report:
    """Write `out/index.html`, its PNG figures and `report.json` for a bundle or checkpoint."""
    bundle_path, checkpoint_path = find_artifacts(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(page=out / "index.html")
    bundle = Bundle.read(bundle_path) if bundle_path else None
    checkpoint = model = kind = None
    if checkpoint_path:
        kind, model, checkpoint = model_from_checkpoint(checkpoint_path)
    else:
        report.omitted.append(
            f"samples and reconstructions: no checkpoint {Path(source).with_suffix('.pt')}"
        )
    kind = kind or bundle.kind
    classes = None  # a conditional model's classes: the bundle's, else every class of the model
    if bundle and bundle.metadata.get("labels"):
        classes = bundle.metadata["labels"]["classes"]
    elif model is not None and model.cfg.num_classes:
        classes = list(range(model.cfg.num_classes))

    history = (
        checkpoint["history"] if checkpoint else bundle.metadata.get("training", {}).get("history")
    )
    steps = ["history", "generated", "scores"]
    bar = tqdm(steps, desc="report", unit="part", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "history":
            if history:
                report.figures.append(
                    Plot(
                        plot_history(history, out),
                        "Training",
                        "Mean bits/dim per epoch on the training batches and "
                        "the validation split (lower is better).",
                    )
                )
            else:
                report.omitted.append("training curve: no history in the checkpoint or bundle")
        elif step == "generated" and model is not None:
            generated_figures(
                kind,
                model,
                normal,
                out,
                report,
                classes=classes,
                n_samples=n_samples,
                seed=seed,
                device=resolve_device(device),
                progress=progress,
            )
        elif step == "scores":
            if bundle is None:
                report.omitted.append(
                    f"scores, ROC and calibration: no bundle {Path(source).with_suffix('.onnx')}"
                )
            elif not bundle.is_calibrated():
                report.omitted.append("scores, ROC and calibration: the bundle is not calibrated")
            else:
                detector = Detector(bundle, device="cpu")
                score_figures(
                    detector,
                    normal,
                    anomalous,
                    out,
                    report,
                    alpha=detector.default_alpha if alpha is None else alpha,
                    seed=seed,
                    progress=progress,
                )

    meta = bundle.metadata if bundle else {"model": {"hyperparameters": checkpoint["model_config"]}}
    training = meta.get("training", {})
    facts = [
        ("model", kind),
        ("source", str(source)),
        ("hyperparameters", json.dumps(meta["model"].get("hyperparameters", {}))),
        ("normal images", f"{len(normal)} from {normal.source}"),
        ("anomalous images", report.metrics.get("anomalous") or "none"),
    ]
    if bundle:
        facts += [
            ("bundle version", bundle.version),
            ("default score", meta["default_score"]),
            ("trained on", str(training.get("data"))),
            ("epochs", str(training.get("epochs"))),
            (
                "validation bits/dim",
                f"{training.get('validation_bits_per_dim_onnx', float('nan')):.4f}",
            ),
        ]
        if meta.get("labels"):
            facts.append(("conditional", f"yes: classes {meta['labels']['classes']}"))
    write_page(report, f"normalcy report: {Path(source).stem}", facts)
    summary = {
        "page": str(report.page),
        "figures": [f.__dict__ for f in report.figures],
        "metrics": report.metrics,
        "omitted": report.omitted,
    }
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    return report


def split_normal_anomalous(
    data: ImageSet, normal_classes: list[int] | None
) -> tuple[ImageSet, ImageSet | None]:
    """Labelled data with normal classes -> (normal, the rest); otherwise (data, None)."""
    if not normal_classes or data.labels is None:
        return data, None
    is_normal = np.isin(data.labels, normal_classes)
    rest = data.select(~is_normal) if (~is_normal).any() else None
    return data.select(is_normal), rest


def _at_most(data: ImageSet | None, n: int, seed: int) -> ImageSet | None:
    if data is None or len(data) <= n:
        return data
    return data.select(np.sort(np.random.default_rng(seed).choice(len(data), n, replace=False)))


def report_from_specs(
    source: str | Path,
    data: str,
    out: str | Path,
    *,
    anomalous: str | None = None,
    normal_classes: list[int] | None = None,
    max_images: int = 2000,
    seed: int = 0,
    **kwargs,
) -> Report:
    """`normalcy report`: load the data specs, split labelled data into normal classes and the
    rest (the bundle's training classes unless told), and write the report."""
    from detectors.datasets import load

    bundle_path, _ = find_artifacts(source)
    meta = Bundle.read(bundle_path).metadata if bundle_path else {}
    if normal_classes is None:
        normal_classes = meta.get("training", {}).get("normal_classes")
    images = load(data)
    if meta.get("labels"):
        # A conditional bundle's anomalies are wrong labels (or --anomalous): the other classes
        # have no label it knows.
        normal = images.with_classes(normal_classes or meta["labels"]["classes"])
        rest = None
    else:
        normal, rest = split_normal_anomalous(images, normal_classes)
    if anomalous:
        rest = load(anomalous)
    return make_report(
        source,
        _at_most(normal, max_images, seed),
        out,
        anomalous=_at_most(rest, max_images, seed),
        seed=seed,
        **kwargs,
    )


def report_after_training(job) -> Report:
    """The report `normalcy train` writes beside its bundle (`<stem>-report/`): the validation
    split as normal images (never trained on, never calibrated on) and, for labelled data with
    normal classes, the other classes as anomalies."""
    from detectors.datasets import load

    from .data import split
    from .pipeline import prepare_data
    from .train import TrainConfig

    cfg = job.train or TrainConfig()
    splits = split(
        prepare_data(job.data, job.normal_classes),
        seed=cfg.seed,
        validation=job.validation,
        calibration=job.calibration,
    )
    anomalous = None
    if job.normal_classes and not cfg.conditional:
        _, anomalous = split_normal_anomalous(load(job.data), job.normal_classes)
    out = Path(job.out)
    return make_report(
        out,
        splits.validation,
        out.with_name(out.stem + "-report"),
        anomalous=_at_most(anomalous, 2000, cfg.seed),
        alpha=job.alpha,
        seed=cfg.seed,
        progress=job.progress,
    )
