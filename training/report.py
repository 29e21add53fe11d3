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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detectors import Detector
from detectors.bundle import Bundle
from detectors.errors import InputError
from detectors.sources import ImageSet, load
from detectors.spec import BundleSpec

from .figures import Plot, Report, generated_figures, score_figures
from .plots import plot_history
from .train import (
    OBJECTIVES,
    history_curve,
    history_objective,
    interactive,
    model_from_checkpoint,
    resolve_device,
)

# What each figure is, in words, by the name the bundle gives that score.
OBJECTIVE_NAMES = {
    "nll": "exact negative log-likelihood",
    "neg_elbo": "negative ELBO, one sample",
    "iwae": "importance-weighted bound",
}


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


def validation_facts(spec: BundleSpec) -> list[tuple[str, str]]:
    """The validation bits/dim a bundle records, each named for what it is: the training
    objective of the best epoch (torch) and the bundle's likelihood score through its graph."""
    training, likelihood = spec.training, spec.likelihood_score
    samples = f", K = {spec.noise.samples}" if spec.noise else ""
    figures = {likelihood: (training.validation_bits_per_dim_onnx, "through the bundle's graph")}
    objective = training.extra.get("objective", OBJECTIVES[spec.model.kind])
    if objective != likelihood:
        figures[objective] = (training.validation_bits_per_dim, "training's best epoch")
    return [
        (
            f"val_{name}_bits_per_dim",
            f"{float('nan') if bits is None else bits:.4f} "
            f"({OBJECTIVE_NAMES.get(name, name)}{samples if name == 'iwae' else ''}; {where})",
        )
        for name, (bits, where) in sorted(figures.items(), key=lambda kv: kv[0] != objective)
    ]


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
    progress = progress and interactive()  # bars on a terminal, never \r updates into a file
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
    if bundle and bundle.spec.labels:
        classes = list(bundle.spec.labels.classes)
    elif model is not None and model.cfg.num_classes:
        classes = list(range(model.cfg.num_classes))

    history = checkpoint["history"] if checkpoint else bundle.spec.training.history
    steps = ["history", "generated", "scores"]
    bar = tqdm(steps, desc="report", unit="part", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "history":
            if history:
                objective = OBJECTIVE_NAMES.get(history_objective(history) or OBJECTIVES[kind])
                report.figures.append(
                    Plot(
                        plot_history(
                            [row["epoch"] for row in history],
                            history_curve(history, "train"),
                            history_curve(history, "val"),
                            f"{objective}, bits/dim",
                            out,
                        ),
                        "Training",
                        f"The training objective ({objective}, bits/dim) per epoch: its mean "
                        "over the training batches and over the validation split (lower is "
                        "better).",
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

    hyperparameters = bundle.spec.model.hyperparameters if bundle else checkpoint["model_config"]
    facts = [
        ("model", kind),
        ("source", str(source)),
        ("hyperparameters", json.dumps(hyperparameters)),
        ("normal images", f"{len(normal)} from {normal.source}"),
        ("anomalous images", report.metrics.get("anomalous") or "none"),
    ]
    if bundle:
        facts += [
            ("bundle version", bundle.version),
            ("default score", bundle.spec.default_score),
            ("trained on", str(bundle.spec.training.data)),
            ("epochs", str(bundle.spec.training.epochs)),
            *validation_facts(bundle.spec),
        ]
        if classes and bundle.spec.labels:
            facts.append(("conditional", f"yes: classes {classes}"))
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
    bundle_path, _ = find_artifacts(source)
    spec = Bundle.read(bundle_path).spec if bundle_path else None
    if normal_classes is None and spec is not None:
        normal_classes = spec.training.normal_classes
    images = load(data)
    if spec is not None and spec.labels:
        # A conditional bundle's anomalies are wrong labels (or --anomalous): the other classes
        # have no label it knows.
        normal = images.with_classes(normal_classes or list(spec.labels.classes))
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
