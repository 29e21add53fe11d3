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

from detectors.spec import (
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

from .densities import Statistics
from .models import VAE, PixelCNN
from .models.density import (
    CoarseFeatureDensity,
    FeatureDensity,
    FeatureMixture,
    FeatureNeighbours,
    LatentMixture,
    RegionDensity,
)
from .scores import default_score, score_specs

OPSET = 18
IMAGE_INPUT = "images"
NOISE_INPUT = "noise"
LABEL_INPUT = "labels"


class PixelCNNGraph(nn.Module):
    """images -> nll_bits_per_dim (B,) and nll_bits_map (B, C, H, W); with the local model (a
    PixelCNN of a 3x3 receptive field), local_nll_bits_per_dim (B,); with the region density
    (models/density.py), nll_map_distance (B,) over the full and local maps."""

    def __init__(
        self,
        model: PixelCNN,
        *,
        local: PixelCNN | None = None,
        region: RegionDensity | None = None,
    ):
        super().__init__()
        self.model = model
        self.local = local
        self.region = region

    def output_names(self) -> list[str]:
        names = ["nll_bits_per_dim", "nll_bits_map"]
        names += ["local_nll_bits_per_dim"] if self.local is not None else []
        return names + (["nll_map_distance"] if self.region is not None else [])

    def forward(self, images, labels=None):
        bits_map = self.model.nll_bits_map(images, labels)
        outputs = (bits_map.flatten(1).mean(1), bits_map)
        maps = (bits_map,)
        if self.local is not None:
            local_map = self.local.nll_bits_map(images, labels)
            outputs += (local_map.flatten(1).mean(1),)
            maps += (local_map,)
        if self.region is not None:
            outputs += (self.region(*maps),)
        return outputs


class VAEGraph(nn.Module):
    """(images, noise) -> neg_elbo_bits_per_dim, iwae_bits_per_dim, recon_bits_map, recon_mse,
    kl_bits_per_dim and posterior_log_std (the posterior's mean log standard deviation, nats);
    with the fitted densities (models/density.py), latent_nll_nats (the posterior mean under the
    latent mixture), recon_map_distance (the reconstruction map under the region density),
    encoder_distance and encoder_coarse_distance (the encoder's features under the feature
    densities over 3x3 and 2x2 regions), encoder_mixture_nll_nats (under the feature
    mixture), encoder_neighbour_distance (to the nearest training images' features) and
    encoder_outlier_factor (that distance against the neighbours' own, a local outlier factor)."""

    def __init__(
        self,
        model: VAE,
        *,
        latent: LatentMixture | None = None,
        region: RegionDensity | None = None,
        encoder: FeatureDensity | None = None,
        encoder_coarse: CoarseFeatureDensity | None = None,
        encoder_mixture: FeatureMixture | None = None,
        encoder_neighbours: FeatureNeighbours | None = None,
    ):
        super().__init__()
        self.model = model
        self.latent = latent
        self.region = region
        self.encoder = encoder
        self.encoder_coarse = encoder_coarse
        self.encoder_mixture = encoder_mixture
        self.encoder_neighbours = encoder_neighbours

    def output_names(self) -> list[str]:
        names = ["neg_elbo_bits_per_dim", "iwae_bits_per_dim", "recon_bits_map", "recon_mse"]
        names += ["kl_bits_per_dim", "posterior_log_std"]
        names += ["latent_nll_nats"] if self.latent is not None else []
        names += ["recon_map_distance"] if self.region is not None else []
        names += ["encoder_distance"] if self.encoder is not None else []
        names += ["encoder_coarse_distance"] if self.encoder_coarse is not None else []
        names += ["encoder_mixture_nll_nats"] if self.encoder_mixture is not None else []
        if self.encoder_neighbours is not None:
            names += ["encoder_neighbour_distance", "encoder_outlier_factor"]
        return names

    def forward(self, images, noise, labels=None):
        features = self.model.encoder_features(images, labels)
        *bounds, kl, mu, logvar = self.model.score_terms(images, noise, labels, features=features)
        outputs = (*bounds, kl, 0.5 * logvar.mean(1))
        if self.latent is not None:
            outputs += (self.latent(mu),)
        if self.region is not None:
            outputs += (self.region(bounds[2]),)
        if self.encoder is not None:
            outputs += (self.encoder(features),)
        if self.encoder_coarse is not None:
            outputs += (self.encoder_coarse(features),)
        if self.encoder_mixture is not None:
            outputs += (self.encoder_mixture(features),)
        if self.encoder_neighbours is not None:
            outputs += self.encoder_neighbours.distance_and_factor(features)
        return outputs


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


def export_graph_bytes(
    kind: str,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    statistics: Statistics | None = None,
    samples: int = 4,
) -> bytes:
    """The ONNX graph bytes for a fitted model taking images of `image_shape` (C, H, W), with the
    fitted densities and the local model of `statistics` inside the one graph."""
    cfg = model.cfg
    conditional = cfg.num_classes > 0
    x = torch.randint(0, 256, (2, *image_shape), dtype=torch.uint8)
    label = [torch.zeros(2, dtype=torch.int64)] if conditional else []
    label_name = [LABEL_INPUT] if conditional else []
    graph = scoring_graph(kind, model, statistics=statistics)
    if kind == "pixelcnn":
        return export_graph(graph, (x, *label), [IMAGE_INPUT, *label_name])
    # The example's sample count must differ from every static size, or the exporter fixes it.
    example_k = next(k for k in range(3, 64) if k not in (cfg.latent, *image_shape))
    noise = torch.randn(2, example_k, cfg.latent)
    return export_graph(graph, (x, noise, *label), [IMAGE_INPUT, NOISE_INPUT, *label_name])


def scoring_graph(
    kind: str,
    model: nn.Module,
    *,
    statistics: Statistics | None = None,
) -> nn.Module:
    """The module that is exported: the model's scores and, with `statistics`, its densities."""
    st = statistics or Statistics()
    if kind == "pixelcnn":
        return PixelCNNGraph(model, local=st.local, region=st.region)
    return VAEGraph(
        model,
        latent=st.latent,
        region=st.region,
        encoder=st.encoder,
        encoder_coarse=st.encoder_coarse,
        encoder_mixture=st.encoder_mixture,
        encoder_neighbours=st.encoder_neighbours,
    )


def base_spec(
    kind: str,
    model: nn.Module,
    image_shape: tuple[int, int, int],
    *,
    statistics: bool = False,
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
    scores, default = score_specs(kind, statistics)
    return BundleSpec(
        model=ModelInfo(
            kind=kind,
            hyperparameters=asdict(cfg),
            parameters=sum(p.numel() for p in model.parameters()),
            conditional=cfg.num_classes > 0,
            num_classes=cfg.num_classes,
            background=False,
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
