"""`normalcy train`: data -> fitted model -> ONNX graph -> calibrated bundle, checkpoint beside
it."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import detectors
from detectors import Detector
from detectors.bundle import Bundle, write_bundle
from detectors.errors import InputError
from detectors.fitting import calibrated_spec, reference_warnings
from detectors.spec import TrainingFacts

from . import distributed
from .data import ImageSet, load, split
from .densities import fit_statistics, local_config
from .export import base_spec, export_graph_bytes
from .models import PixelCNNConfig, VAEConfig
from .train import TrainConfig, fit, resolve_device

LOCAL_BUDGET = 0.25  # the local model's share of --max-minutes, on top of the full model's


@dataclass
class TrainJob:
    kind: str  # pixelcnn | vae
    data: str  # data spec
    out: str  # FILE.onnx
    normal_classes: list[int] | None = None
    model: dict | None = None  # hyperparameters for the model's config dataclass
    train: TrainConfig | None = None
    alpha: float = 0.01
    samples: int = 4  # VAE importance samples at scoring time
    validation: float = 0.1
    # Every score's reference; the combined score's members inside the combination are referenced
    # on the validation split instead (detectors/combination.py).
    calibration: float = 0.2
    progress: bool = True
    resume: bool = False  # continue from the checkpoint(s) beside `out`


def prepare_data(spec: str, normal_classes: list[int] | None) -> ImageSet:
    data = load(spec)
    return data.with_classes(normal_classes) if normal_classes else data


def model_config(
    kind: str, data: ImageSet, overrides: dict | None, *, conditional: bool = False
) -> dict:
    """The model's hyperparameters; a conditional model gets one class per label value up to the
    largest label in the data (labels must be 0 .. K-1 integers)."""
    channels, height, width = data.images.shape[1:]
    overrides = dict(overrides or {})
    if conditional:
        if data.labels is None:
            msg = f"{data.source}: a conditional model needs labelled data; these images have none"
            raise InputError(msg)
        if data.labels.min() < 0:
            msg = f"{data.source}: class labels must be >= 0 for a conditional model"
            raise InputError(msg)
        overrides.setdefault("num_classes", int(data.labels.max()) + 1)
        if kind == "pixelcnn":  # for the per-class spatial bias
            overrides.setdefault("height", height)
            overrides.setdefault("width", width)
    if kind == "pixelcnn":
        return asdict(PixelCNNConfig(channels=channels, **overrides))
    return asdict(VAEConfig(channels=channels, height=height, width=width, **overrides))


def run(job: TrainJob) -> tuple[Bundle | None, dict | None]:
    """Train, export and calibrate; returns the written bundle and a summary of what happened.

    Under torchrun every rank trains its shard (see training/distributed.py) and only rank 0 exports
    and writes the bundle; the other ranks return (None, None)."""
    started = time.monotonic()
    out = Path(job.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = prepare_data(job.data, job.normal_classes)
    splits = split(
        data,
        seed=(job.train or TrainConfig()).seed,
        validation=job.validation,
        calibration=job.calibration,
    )
    cfg = job.train or TrainConfig()
    config = model_config(job.kind, data, job.model, conditional=cfg.conditional)
    classes = sorted(set(data.labels.tolist())) if cfg.conditional else None
    world = distributed.setup(cuda=resolve_device(cfg.device).type == "cuda")
    model, result = fit(
        job.kind,
        config,
        splits,
        cfg,
        checkpoint=out.with_suffix(".pt"),
        resume=job.resume,
        progress=job.progress,
    )

    def fit_partner(partner_config: dict, partner_cfg: TrainConfig, suffix: str):
        checkpoint = out.with_name(out.stem + suffix)
        return fit(
            job.kind,
            partner_config,
            splits,
            partner_cfg,
            checkpoint=checkpoint,
            resume=job.resume,
            progress=job.progress,
        )

    local, local_result = None, None
    if job.kind == "pixelcnn":  # the local model of the local-versus-full ratio
        local_cfg = replace(cfg, max_minutes=cfg.max_minutes and cfg.max_minutes * LOCAL_BUDGET)
        local, local_result = fit_partner(local_config(config), local_cfg, ".local.pt")
    fits = [r for r in (result, local_result) if r is not None]
    train_seconds = sum(r.train_seconds for r in fits)
    validation_seconds = sum(r.validation_seconds for r in fits)
    distributed.teardown(world)
    if not world.is_main:
        return None, None

    calibration_started = time.monotonic()  # from here on: export and calibration
    image_shape = tuple(int(d) for d in data.images.shape[1:])
    training = {
        "data": job.data,
        "normal_classes": job.normal_classes,
        "data_fingerprint": data.fingerprint(),
        "n_train": len(splits.train),
        "n_validation": len(splits.validation),
        "n_calibration": len(splits.calibration),
        "epochs": result.epochs,
        "stopped": result.stopped,
        "history": result.history,
        "validation_bits_per_dim": result.best_validation_bits_per_dim,  # the objective's
        "objective": result.objective,
        "train_seconds": round(train_seconds, 1),
        "validation_seconds": round(validation_seconds, 1),
        "train_config": asdict(cfg),
        "local": (
            None
            if local_result is None
            else {
                "hyperparameters": local_config(config),
                "epochs": local_result.epochs,
                "validation_bits_per_dim": local_result.best_validation_bits_per_dim,
            }
        ),
        "package_version": detectors.__version__,
        "torch_version": torch.__version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    spec = base_spec(
        job.kind,
        model,
        image_shape,
        statistics=True,
        samples=job.samples,
        alpha=job.alpha,
        training=TrainingFacts.from_json(training, "training"),
        classes=classes,
    )
    statistics = fit_statistics(
        job.kind,
        model,
        splits.train.images,
        splits.train.labels if cfg.conditional else None,
        local=local,
        noise=spec.noise,
    )
    graph = export_graph_bytes(
        job.kind,
        model.cpu(),
        image_shape,
        statistics=statistics,
        samples=job.samples,
    )
    draft = write_bundle(graph, spec, out)
    # A conditional bundle is calibrated on each calibration image given its own (true) label.
    cal_labels, val_labels = None, None
    if cfg.conditional:
        cal_labels, val_labels = splits.calibration.labels, splits.validation.labels
    spec = calibrated_spec(
        draft,
        splits.calibration.images,
        labels=cal_labels,
        members=splits.validation.images,
        member_labels=val_labels,
        source=f"{job.data} (calibration split; members inside the combination: validation split)",
    )
    test_bpd = _bundle_bits_per_dim(draft, splits.validation.images, val_labels)
    spec = replace(spec, training=replace(spec.training, validation_bits_per_dim_onnx=test_bpd))
    bundle = write_bundle(graph, spec, out)
    # Two validation figures, each named for what it is: the training objective of the best epoch
    # (val_neg_elbo_ for the VAE) and the bundle's likelihood score through the exported graph
    # (val_iwae_, K samples: a tighter bound). For the PixelCNN both are the exact NLL, one key.
    summary = {
        "bundle": str(out),
        "checkpoint": str(out.with_suffix(".pt")),
        f"val_{result.objective}_bits_per_dim": result.best_validation_bits_per_dim,
        f"val_{spec.likelihood_score}_bits_per_dim": test_bpd,
        "epochs": result.epochs,
        "stopped": result.stopped,
        # --max-minutes bounds the training loop; what follows it is timed apart.
        "train_seconds": round(train_seconds, 1),
        "validation_seconds": round(validation_seconds, 1),
        "calibration_seconds": round(time.monotonic() - calibration_started, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "warnings": reference_warnings(spec),
    }
    return bundle, summary


def _bundle_bits_per_dim(
    bundle: Bundle, images: np.ndarray, labels: np.ndarray | None = None
) -> float:
    """Mean bits/dim through the exported graph: exact NLL (PixelCNN) or the IWAE bound (VAE)."""
    detector = Detector(bundle, device="cpu", raw_only=True)
    name = bundle.spec.likelihood_score
    scores, _ = detector.raw_scores_batched(images, [name], labels=labels)
    return float(scores[name].mean())
