"""Export a fitted model as one self-describing ONNX file: the graph and its metadata.

The graph takes uint8 images (B, C, H, W) (and, for the VAE, its noise (B, K, latent)) and returns
scores in bits/dim plus a per-pixel map in bits. The log-softmax, the gather of the observed levels
and the sums all live inside the graph, so the runtime never sees 256-way logits.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from detectors.score_kinds import ComplexityScore, DifferenceScore, OutputScore, ScoreSpec
from detectors.spec import (
    LIKELIHOOD_SCORES,
    BundleSpec,
    Calibration,
    HeatmapSpec,
    ImageInput,
    LabelSpec,
    ModelInfo,
    NoiseSpec,
    Preprocessing,
    TrainingFacts,
)

from .models import VAE, PixelCNN

OPSET = 18
IMAGE_INPUT = "images"
NOISE_INPUT = "noise"
LABEL_INPUT = "labels"


class PixelCNNGraph(nn.Module):
    """images -> (nll_bits_per_dim (B,), nll_bits_map (B, C, H, W)); with a background model, also
    background_nll_bits_per_dim (B,) for the likelihood ratio."""

    def __init__(self, model: PixelCNN, background: PixelCNN | None = None):
        super().__init__()
        self.model = model
        self.background = background

    def output_names(self) -> list[str]:
        names = ["nll_bits_per_dim", "nll_bits_map"]
        return names + (["background_nll_bits_per_dim"] if self.background is not None else [])

    def forward(self, images, labels=None):
        bits_map = self.model.nll_bits_map(images, labels)
        outputs = (bits_map.flatten(1).mean(1), bits_map)
        if self.background is not None:
            outputs += (self.background.bits_per_dim(images, labels),)
        return outputs


class VAEGraph(nn.Module):
    """(images, noise) -> (neg_elbo_bits_per_dim, iwae_bits_per_dim, recon_bits_map, recon_mse)."""

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def output_names(self) -> list[str]:
        return ["neg_elbo_bits_per_dim", "iwae_bits_per_dim", "recon_bits_map", "recon_mse"]

    def forward(self, images, noise, labels=None):
        return self.model.scores(images, noise, labels)


def export_graph(
    graph: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str]
) -> bytes:
    """Trace `graph` with torch.onnx (dynamo) into ONNX bytes with a dynamic batch axis."""
    graph = graph.cpu().eval()
    batch = torch.export.Dim("batch", min=1)
    dynamic: list[dict] = [{0: batch} for _ in example]
    if input_names[:2] == [IMAGE_INPUT, NOISE_INPUT]:
        dynamic[1] = {0: batch, 1: torch.export.Dim("samples", min=1)}
    # The exporter warns about every torchvision op it cannot register; none are used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example,
            dynamo=True,
            opset_version=OPSET,
            input_names=input_names,
            output_names=graph.output_names(),
            dynamic_shapes=tuple(dynamic),
            external_data=False,
            verbose=False,
            report=False,
        )
        path = Path(tmp) / "graph.onnx"
        program.save(str(path), external_data=False)
        return path.read_bytes()


# The default score of each model kind and why: one line to change when benchmarks/quality.py
# (the highest worst-case AUROC across protocol 1 and the one-class means) supports another.
DEFAULT_SCORES = {
    "pixelcnn": (
        "nll_minus_zlib",
        "input-complexity correction (zlib): on Fashion-MNIST vs MNIST AUROC 0.994 "
        "(benchmarks/results/quality_pair_150s.md, H200, 150 s per model) against 0.066 for raw "
        "NLL and 0.76 for the likelihood ratio, which moved by up to 0.14 between runs; one-class "
        "means (0.57-0.60 MNIST, 0.70 Fashion-MNIST, benchmarks/results/quality.md) are poor for "
        "every PixelCNN score, so the pair decides.",
    ),
    "vae": (
        "iwae_minus_png",
        "the highest worst case across protocols in benchmarks/results/quality.md (H200): AUROC "
        "0.993 on Fashion-MNIST vs MNIST, one-class means 0.928 (MNIST) and 0.916 "
        "(Fashion-MNIST); iwae_minus_zlib 0.997 / 0.915 / 0.910 and recon_mse 0.989 / 0.955 / "
        "0.903 are close behind, raw bounds fail on the pair (0.35-0.41).",
    ),
}


def default_score(kind: str, scores: dict) -> tuple[str, str]:
    """The default score for a bundle offering `scores`, and the reason (falls back to the
    complexity-corrected likelihood when the preferred score is not offered)."""
    name, reason = DEFAULT_SCORES[kind]
    if name in scores:
        return name, reason
    fallback = f"{LIKELIHOOD_SCORES[kind]}_minus_zlib"
    return fallback, f"{name} is not offered by this bundle; {DEFAULT_SCORES[kind][1]}"


# How each kind's likelihood score (detectors.spec.LIKELIHOOD_SCORES) is described: in full, and
# in short for its corrections.
LIKELIHOODS = {
    "pixelcnn": ("negative log-likelihood (exact)", "NLL"),
    "vae": ("importance-weighted bound with K samples", "IWAE bound"),
}
COMPRESSOR_NAMES = {"zlib": "zlib-9", "png": "PNG"}


def score_specs(kind: str, has_background: bool) -> tuple[dict[str, ScoreSpec], str]:
    """The scores a bundle offers (uncalibrated) and the default one: the likelihood in bits/dim
    and its input-complexity corrections, plus the likelihood ratio (PixelCNN with a background
    model) or the negative ELBO and the reconstruction error (VAE)."""
    bits = "bits/dim"
    name = LIKELIHOOD_SCORES[kind]
    output = f"{name}_bits_per_dim"
    description, short = LIKELIHOODS[kind]
    scores: dict[str, ScoreSpec] = {}
    if kind == "vae":
        neg_elbo = "negative ELBO (K-sample average)"
        scores["neg_elbo"] = OutputScore(
            output="neg_elbo_bits_per_dim", description=neg_elbo, units=bits
        )
    scores[name] = OutputScore(output=output, description=description, units=bits)
    for compressor, title in COMPRESSOR_NAMES.items():
        scores[f"{name}_minus_{compressor}"] = ComplexityScore(
            output=output,
            compressor=compressor,
            description=f"{short} minus {title} code length (input-complexity correction)",
            units=bits,
        )
    if kind == "pixelcnn" and has_background:
        scores["likelihood_ratio"] = DifferenceScore(
            output=output,
            minus_output="background_nll_bits_per_dim",
            description="NLL minus the background model's NLL (likelihood ratio, Ren et al. 2019)",
            units=bits,
        )
    if kind == "vae":
        scores["recon_mse"] = OutputScore(
            output="recon_mse",
            description="reconstruction error at the posterior mean",
            units="mean squared error, intensities in [0, 1]",
        )
    return scores, default_score(kind, scores)[0]


def export_graph_bytes(
    kind: str,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    background: PixelCNN | None = None,
    samples: int = 4,
) -> bytes:
    """The ONNX graph bytes for a fitted model taking images of `image_shape` (C, H, W)."""
    cfg = model.cfg
    conditional = cfg.num_classes > 0
    x = torch.randint(0, 256, (2, *image_shape), dtype=torch.uint8)
    label = [torch.zeros(2, dtype=torch.int64)] if conditional else []
    label_name = [LABEL_INPUT] if conditional else []
    if kind == "pixelcnn":
        return export_graph(
            PixelCNNGraph(model, background), (x, *label), [IMAGE_INPUT, *label_name]
        )
    # The example's sample count must differ from every static size, or the exporter fixes it.
    example_k = next(k for k in range(3, 64) if k not in (cfg.latent, *image_shape))
    noise = torch.randn(2, example_k, cfg.latent)
    return export_graph(
        VAEGraph(model), (x, noise, *label), [IMAGE_INPUT, NOISE_INPUT, *label_name]
    )


def base_spec(
    kind: str,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    has_background: bool,
    samples: int,
    alpha: float,
    training: TrainingFacts,
    noise_seed: int = 0,
    classes: list[int] | None = None,
) -> BundleSpec:
    """The bundle metadata before calibration (empty references). A conditional model lists the
    `classes` it was trained on (default: all of 0 .. num_classes - 1)."""
    cfg = model.cfg
    labels = None
    if cfg.num_classes:
        classes = sorted(int(c) for c in classes) if classes else list(range(cfg.num_classes))
        labels = LabelSpec(input=LABEL_INPUT, num_classes=cfg.num_classes, classes=tuple(classes))
    channels, height, width = image_shape
    scores, default = score_specs(kind, has_background)
    return BundleSpec(
        model=ModelInfo(
            kind=kind,
            hyperparameters=asdict(cfg),
            parameters=sum(p.numel() for p in model.parameters()),
            conditional=cfg.num_classes > 0,
            num_classes=cfg.num_classes,
            background=has_background,
        ),
        input=ImageInput(
            name=IMAGE_INPUT,
            channels=channels,
            height=height,
            width=width,
            color_mode="L" if channels == 1 else "RGB",
        ),
        preprocessing=Preprocessing(
            resize="bilinear", color="convert", scale="x / 127.5 - 1 (in graph)"
        ),
        noise=(
            NoiseSpec(input=NOISE_INPUT, samples=samples, latent_dim=cfg.latent, seed=noise_seed)
            if kind == "vae"
            else None
        ),
        labels=labels,
        scores=scores,
        default_score=default,
        default_score_reason=default_score(kind, scores)[1],
        heatmap=HeatmapSpec(
            output="nll_bits_map" if kind == "pixelcnn" else "recon_bits_map", units="bits"
        ),
        calibration=Calibration(alpha=alpha, n_reference=0, data=None),
        training=training,
    )
