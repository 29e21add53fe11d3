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

from detectors.bundle import FORMAT, FORMAT_VERSION, HIGHER_IS_ANOMALOUS

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
    fallback = "nll_minus_zlib" if kind == "pixelcnn" else "iwae_minus_zlib"
    return fallback, f"{name} is not offered by this bundle; {DEFAULT_SCORES[kind][1]}"


def score_specs(kind: str, has_background: bool) -> tuple[dict, str]:
    """The scores a bundle offers (uncalibrated) and the default one."""

    def spec(kind_, output, description, **extra):
        return {
            "kind": kind_,
            "output": output,
            "description": description,
            "units": "bits/dim",
            "direction": HIGHER_IS_ANOMALOUS,
            "reference": [],
            **extra,
        }

    if kind == "pixelcnn":
        scores = {
            "nll": spec("output", "nll_bits_per_dim", "negative log-likelihood (exact)"),
            "nll_minus_zlib": spec(
                "complexity",
                "nll_bits_per_dim",
                "NLL minus zlib-9 code length (input-complexity correction)",
                compressor="zlib",
            ),
            "nll_minus_png": spec(
                "complexity",
                "nll_bits_per_dim",
                "NLL minus PNG code length (input-complexity correction)",
                compressor="png",
            ),
        }
        if has_background:
            scores["likelihood_ratio"] = spec(
                "difference",
                "nll_bits_per_dim",
                "NLL minus the background model's NLL (likelihood ratio, Ren et al. 2019)",
                minus_output="background_nll_bits_per_dim",
            )
        return scores, default_score(kind, scores)[0]
    scores = {
        "neg_elbo": spec("output", "neg_elbo_bits_per_dim", "negative ELBO (K-sample average)"),
        "iwae": spec("output", "iwae_bits_per_dim", "importance-weighted bound with K samples"),
        "iwae_minus_zlib": spec(
            "complexity",
            "iwae_bits_per_dim",
            "IWAE bound minus zlib-9 code length (input-complexity correction)",
            compressor="zlib",
        ),
        "iwae_minus_png": spec(
            "complexity",
            "iwae_bits_per_dim",
            "IWAE bound minus PNG code length (input-complexity correction)",
            compressor="png",
        ),
        "recon_mse": {
            **spec("output", "recon_mse", "reconstruction error at the posterior mean"),
            "units": "mean squared error, intensities in [0, 1]",
        },
    }
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


def base_metadata(
    kind: str,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    has_background: bool,
    samples: int,
    alpha: float,
    training: dict,
    noise_seed: int = 0,
    classes: list[int] | None = None,
) -> dict:
    """The bundle metadata before calibration (empty references). A conditional model lists the
    `classes` it was trained on (default: all of 0 .. num_classes - 1)."""
    cfg = model.cfg
    labels = None
    if cfg.num_classes:
        classes = sorted(int(c) for c in classes) if classes else list(range(cfg.num_classes))
        labels = {
            "input": LABEL_INPUT,
            "dtype": "int64",
            "num_classes": cfg.num_classes,
            "classes": classes,
        }
    channels, height, width = image_shape
    scores, default = score_specs(kind, has_background)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {
            "kind": kind,
            "hyperparameters": asdict(cfg),
            "parameters": sum(p.numel() for p in model.parameters()),
            "conditional": cfg.num_classes > 0,
            "num_classes": cfg.num_classes,
            "background": has_background,
        },
        "input": {
            "name": IMAGE_INPUT,
            "dtype": "uint8",
            "channels": channels,
            "height": height,
            "width": width,
            "color_mode": "L" if channels == 1 else "RGB",
        },
        "preprocessing": {
            "resize": "bilinear",
            "color": "convert",
            "scale": "x / 127.5 - 1 (in graph)",
        },
        "noise": (
            {"input": NOISE_INPUT, "samples": samples, "latent_dim": cfg.latent, "seed": noise_seed}
            if kind == "vae"
            else None
        ),
        "labels": labels,
        "scores": scores,
        "default_score": default,
        "default_score_reason": default_score(kind, scores)[1],
        "heatmap": {
            "output": "nll_bits_map" if kind == "pixelcnn" else "recon_bits_map",
            "units": "bits",
            "mean": None,
            "std": None,
        },
        "calibration": {"alpha": alpha, "n_reference": 0, "data": None},
        "training": training,
    }
