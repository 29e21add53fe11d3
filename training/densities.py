"""After training, before export: the local model's partner statistics and the densities fitted on
the normal training images, which the exported graph then computes (models/density.py).

    VAE        LatentMixture over the posterior means; RegionDensity over the reconstruction maps;
               FeatureDensity, CoarseFeatureDensity, FeatureMixture and FeatureNeighbours over
               the encoder's last feature maps
    PixelCNN   RegionDensity over the full and the local model's NLL maps, side by side

Fitted on the training split (never the calibration images, whose scores must stay exchangeable
with new images'), at most FIT_IMAGES of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detectors.runtime import vae_noise
from detectors.spec import NoiseSpec

from .models import PixelCNN
from .models.density import (
    CoarseFeatureDensity,
    FeatureDensity,
    FeatureMixture,
    FeatureNeighbours,
    LatentMixture,
    RegionDensity,
)

FIT_IMAGES = 4000
BATCH = 256


@dataclass
class Statistics:
    """What the graph needs besides the model for its extra statistics (all None: none)."""

    local: PixelCNN | None = None  # PixelCNN only: the 3x3 model of the local ratio
    latent: LatentMixture | None = None  # VAE only
    region: RegionDensity | None = None
    encoder: FeatureDensity | None = None  # VAE only
    encoder_coarse: CoarseFeatureDensity | None = None  # VAE only
    encoder_mixture: FeatureMixture | None = None  # VAE only
    encoder_neighbours: FeatureNeighbours | None = None  # VAE only


def local_config(config: dict) -> dict:
    """The local model's hyperparameters: the full model's, cut to one gated layer of kernel 3,
    so that it sees the 2x3 pixels above and the one to the left (about 3x3)."""
    return {**config, "layers": 1, "kernel": 3}


def subset(n: int, seed: int = 0) -> np.ndarray:
    """At most FIT_IMAGES indices of n, in order, the same on every run."""
    if n <= FIT_IMAGES:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, FIT_IMAGES, replace=False))


@torch.no_grad()
def fit_statistics(
    kind: str,
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    local: PixelCNN | None = None,
    noise: NoiseSpec | None = None,
) -> Statistics:
    """Fit the densities on normal training images uint8 (N, C, H, W) (their labels for a
    conditional model); the VAE needs the bundle's `noise`, so that its maps are the served ones."""
    keep = subset(len(images))
    x = torch.from_numpy(np.ascontiguousarray(images[keep]))
    y = None if labels is None else torch.from_numpy(np.asarray(labels)[keep]).long()
    model = model.cpu().eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(x), BATCH):
        xb = x[start : start + BATCH]
        yb = None if y is None else y[start : start + BATCH]
        if kind == "pixelcnn":
            batch = {"full": model.nll_bits_map(xb, yb)}
            if local is not None:
                batch["local"] = local.cpu().eval().nll_bits_map(xb, yb)
        else:
            eps = torch.from_numpy(vae_noise(noise, len(xb)))
            features = model.encoder_features(xb, yb)
            terms = model.score_terms(xb, eps, yb, features=features)
            batch = {"recon": terms[2], "mu": terms[5], "features": features}
        for name, value in batch.items():
            parts.setdefault(name, []).append(value)
    values = {name: torch.cat(chunks) for name, chunks in parts.items()}
    if kind == "pixelcnn":
        maps = [values["full"]] + ([values["local"]] if local is not None else [])
        return Statistics(local=local, region=RegionDensity.fit(*maps))
    return Statistics(
        latent=LatentMixture.fit(values["mu"].double().numpy()),
        region=RegionDensity.fit(values["recon"]),
        encoder=FeatureDensity.fit(values["features"]),
        encoder_coarse=CoarseFeatureDensity.fit(values["features"]),
        encoder_mixture=FeatureMixture.fit(values["features"]),
        encoder_neighbours=FeatureNeighbours.fit(values["features"]),
    )
