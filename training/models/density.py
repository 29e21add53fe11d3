"""Densities fitted after training, on normal data, and exported inside the graph as constants.

- `LatentMixture`: a full-covariance Gaussian mixture over the VAE's posterior means, i.e. a smooth
  model of the aggregate posterior of the normal data (LSA, Abati et al. 2019, used an
  autoregressive density for the same job). Its number of components is chosen by BIC on the
  training codes: a normal-only criterion.
- `RegionDensity`: a Gaussian over a per-pixel map (the PixelCNN's NLL map, the VAE's
  reconstruction map) pooled into a coarse grid of regions, after a log. Its squared Mahalanobis
  distance says how unusual the *pattern* of surprise is: which regions of the image the model
  found hard. The total likelihood averages that pattern away, and a pixel-level likelihood is
  dominated by local texture that every class shares (DoSE, Morningstar et al. 2021, fits
  densities of such statistics).
- `FeatureDensity`: a Gaussian over the VAE encoder's last feature maps, each channel pooled into
  FEATURE_GRID x FEATURE_GRID regions: how typical the image looks to the encoder before it is
  squeezed into the latent code. Alone it was the strongest VAE statistic on the development
  splits (benchmarks/results/candidate_statistics.md). `CoarseFeatureDensity` is the same
  Gaussian over 2x2 regions: fewer features (4 per channel, not 9) for the same images.
- `FeatureMixture`: the same 3x3 features projected on their first FEATURE_COMPONENTS principal
  components, under a full-covariance Gaussian mixture whose size BIC chooses: where one Gaussian
  sees one blob, the mixture sees the several ways a class is written (a 7 with or without its
  bar). benchmarks/results/candidate_statistics_mixture.md has both on development splits.
- `FeatureNeighbours`: the cosine distance of the encoder's full-resolution feature maps to their
  nearest among the normal training images' (a k-nearest-neighbour density, as PyOD's KNN is on
  pixels, in the encoder's features instead), and the local outlier factor of those neighbours
  (as scikit-learn's LocalOutlierFactor is on pixels).

All are plain buffers and tensor arithmetic, so the exported graph computes them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

GRID = 7  # regions per side (28x28 -> 4x4-pixel regions); at most the image's own size
# regions per side of a feature map (a 28x28 VAE's 7x7 codes -> 3x3; 128 channels x 9 features)
FEATURE_GRID = 3
LOG_FLOOR_BITS = 0.01  # log(map + floor): a pixel the model predicts perfectly is not -inf
MIXTURE_COMPONENTS = (1, 2, 4, 8, 16)
FEATURE_COMPONENTS = 32  # principal components of the encoder features under FeatureMixture
FEATURE_MIXTURE_COMPONENTS = (1, 2, 4, 8)  # the mixture sizes BIC chooses among there
NEIGHBOURS = 5  # nearest training images FeatureNeighbours averages over (distance and LOF)
NEIGHBOUR_COMPONENTS = 256  # principal components FeatureNeighbours keeps of the unit features
LOF_EPSILON = 1e-10  # scikit-learn's guard on the mean reachability distance


class LatentMixture(nn.Module):
    """z (B, d) -> negative log-density (B,) in nats under a Gaussian mixture."""

    def __init__(self, means: np.ndarray, precisions_cholesky: np.ndarray, weights: np.ndarray):
        super().__init__()
        k, d = means.shape
        assert precisions_cholesky.shape == (k, d, d)
        assert weights.shape == (k,)
        log_det = np.log(np.diagonal(precisions_cholesky, axis1=1, axis2=2)).sum(1)
        # log w_k + log |L_k| - d/2 log(2 pi), with precision_k = L_k L_k^T
        const = np.log(weights) + log_det - 0.5 * d * math.log(2 * math.pi)
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("prec_chol", torch.tensor(precisions_cholesky, dtype=torch.float32))
        self.register_buffer("const", torch.tensor(const, dtype=torch.float32))

    @classmethod
    def fit(
        cls, codes: np.ndarray, *, seed: int = 0, components: tuple[int, ...] = MIXTURE_COMPONENTS
    ) -> LatentMixture:
        """The mixture with the lowest BIC among `components` components (at most one
        component per 20 codes), fitted to `codes` (N, d)."""
        from sklearn.mixture import GaussianMixture

        codes = np.asarray(codes, dtype=np.float64)
        best = None
        for k in components:
            if k > 1 and 20 * k > len(codes):
                break
            gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed)
            gmm.fit(codes)
            bic = gmm.bic(codes)
            if best is None or bic < best[0]:
                best = (bic, gmm)
        gmm = best[1]
        return cls(gmm.means_, gmm.precisions_cholesky_, gmm.weights_)

    @property
    def components(self) -> int:
        return int(self.means.shape[0])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        diff = z.float()[:, None, :] - self.means[None]  # (B, K, d)
        y = torch.einsum("bkd,kde->bke", diff, self.prec_chol)  # whitened, (B, K, d)
        log_p = self.const[None] - 0.5 * y.pow(2).sum(2)  # (B, K)
        return -torch.logsumexp(log_p, dim=1)


def pooling_matrix(height: int, width: int, grid: int = GRID) -> np.ndarray:
    """(H*W, gh*gw) averaging weights of adaptive average pooling into a gh x gw grid."""
    gh, gw = min(grid, height), min(grid, width)

    def bins(size: int, n: int) -> np.ndarray:
        m = np.zeros((size, n))
        for i in range(n):  # PyTorch's adaptive pooling bins: [floor(i*s/n), ceil((i+1)*s/n))
            start, stop = (i * size) // n, -(-((i + 1) * size) // n)
            m[start:stop, i] = 1.0 / (stop - start)
        return m

    return np.kron(bins(height, gh), bins(width, gw))  # rows: pixel (y, x); columns: region


class PooledGaussian(nn.Module):
    """Maps -> squared Mahalanobis distance (B,) of their pooled `features` from the normal
    images', under a Gaussian whose covariance Ledoit-Wolf shrinks. Subclasses say what the
    features are and into how many regions per side (`grid`) a map is pooled."""

    grid = GRID

    def __init__(self, pooling: np.ndarray, mean: np.ndarray, precision: np.ndarray):
        super().__init__()
        self.register_buffer("pooling", torch.tensor(pooling, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("precision", torch.tensor(precision, dtype=torch.float32))

    def features(self, *maps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def fit(cls, *maps: torch.Tensor) -> PooledGaussian:
        """Fit on the maps (N, C, H, W) of normal images."""
        from sklearn.covariance import LedoitWolf

        pooling = pooling_matrix(maps[0].shape[2], maps[0].shape[3], cls.grid)
        probe = cls(pooling, np.zeros(1), np.eye(1))  # the features need the pooling only
        with torch.no_grad():
            features = probe.features(*maps).double().numpy()
        covariance = LedoitWolf().fit(features).covariance_
        return cls(pooling, features.mean(0), np.linalg.inv(covariance))

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        delta = self.features(*maps) - self.mean  # (B, features)
        return ((delta @ self.precision) * delta).sum(1)


class RegionDensity(PooledGaussian):
    """Per-pixel maps, each (B, C, H, W) in bits -> squared Mahalanobis distance (B,) of their
    pooled logs, side by side, from the normal images'."""

    def features(self, *bits_maps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) maps -> (B, maps * regions): the log of each map, averaged over channels,
        pooled into regions."""
        pooled = [
            torch.log(m.float() + LOG_FLOOR_BITS).mean(1).flatten(1) @ self.pooling
            for m in bits_maps
        ]
        return torch.cat(pooled, dim=1)


def channel_regions(maps: torch.Tensor, pooling: torch.Tensor) -> torch.Tensor:
    """Feature maps (B, C, h, w) -> each channel's region means (B, C * regions), with `pooling`
    (h * w, regions) from pooling_matrix."""
    return (maps.float().flatten(2) @ pooling).flatten(1)


class FeatureDensity(PooledGaussian):
    """A network's feature maps (B, C, h, w) -> squared Mahalanobis distance (B,) of each
    channel's means over FEATURE_GRID x FEATURE_GRID regions from the normal images'. On the VAE's
    encoder it says how typical the image's features are before they are squeezed into the
    latent code (a Gaussian of a network's features, as in Rippel et al. 2020)."""

    grid = FEATURE_GRID

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C * regions)."""
        return channel_regions(maps, self.pooling)


class CoarseFeatureDensity(FeatureDensity):
    """FeatureDensity over 2x2 regions of each channel."""

    grid = 2


class FeatureMixture(nn.Module):
    """A network's feature maps (B, C, h, w) -> negative log-density (B,) in nats of each
    channel's means over FEATURE_GRID x FEATURE_GRID regions, projected on their principal
    components, under a Gaussian mixture (LatentMixture) fitted on normal images'."""

    def __init__(self, pooling: np.ndarray, mean: np.ndarray, basis: np.ndarray, mixture):
        super().__init__()
        self.register_buffer("pooling", torch.tensor(pooling, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32))  # (features, k)
        self.mixture = mixture

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, k): the pooled features' principal-component coordinates."""
        return (channel_regions(maps, self.pooling) - self.mean) @ self.basis

    @classmethod
    def fit(cls, maps: torch.Tensor, *, seed: int = 0) -> FeatureMixture:
        """Fit on the feature maps (N, C, h, w) of normal images: the principal components of
        their pooled features (at most FEATURE_COMPONENTS, fewer than N), then the mixture with
        the lowest BIC among FEATURE_MIXTURE_COMPONENTS components on the coordinates."""
        pooling = pooling_matrix(maps.shape[2], maps.shape[3], FEATURE_GRID)
        with torch.no_grad():
            features = channel_regions(maps, torch.tensor(pooling, dtype=torch.float32))
        features = features.double().numpy()
        mean = features.mean(0)
        k = min(FEATURE_COMPONENTS, features.shape[1], len(features) - 1)
        _, _, vt = np.linalg.svd(features - mean, full_matrices=False)  # principal axes: rows
        basis = vt[:k].T
        mixture = LatentMixture.fit(
            (features - mean) @ basis, seed=seed, components=FEATURE_MIXTURE_COMPONENTS
        )
        return cls(pooling, mean, basis, mixture)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.mixture(self.project(maps))


class FeatureNeighbours(nn.Module):
    """A network's feature maps (B, C, h, w) -> mean squared distance (B,) from the image's
    features, flattened at full resolution and scaled to unit length, to their NEIGHBOURS nearest
    among the normal training images' (a cosine k-nearest-neighbour distance, 2 - 2 cos, in
    [0, 4]). The Gaussians above pool each channel into regions and see one ellipsoid; the
    neighbours keep where in the image a feature fires and see every way a class is written. The
    bank is stored on its first NEIGHBOUR_COMPONENTS principal components (`basis`), which keeps
    the graph small and the distances nearly unchanged.

    The same neighbours also give the local outlier factor (Breunig et al. 2000; scikit-learn's
    LocalOutlierFactor in novelty mode, with Euclidean distances between the principal-component
    coordinates, sqrt(2 - 2 cos) with every component kept): the image's reachability distance
    to its neighbours against *their* own, ~1 inside the normal data and growing off it. A plain
    distance is also large where the normal images are sparse (a rare way of writing a digit);
    the factor measures it against how sparse the neighbourhood is."""

    def __init__(self, bank: np.ndarray, mean: np.ndarray, basis: np.ndarray, neighbours: int):
        super().__init__()
        assert bank.shape[1] == basis.shape[1]
        assert mean.shape == (basis.shape[0],)
        self.neighbours = int(min(neighbours, len(bank)))
        self.register_buffer("bank", torch.tensor(bank, dtype=torch.float32))  # (N, k)
        self.register_buffer("bank_sq", torch.tensor((bank**2).sum(1), dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))  # (features,)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.float32))  # (features, k)
        # For the local outlier factor, each bank image's neighbours among the *other* bank
        # images (at most N - 1 of them): its distance to the last of them, and its local
        # reachability density, 1 / (mean reachability distance to them + LOF_EPSILON).
        own = int(min(neighbours, len(bank) - 1))
        k_distance, density = self.reachability(np.asarray(bank, dtype=np.float64), own)
        self.register_buffer("k_distance", torch.tensor(k_distance, dtype=torch.float32))
        self.register_buffer("density", torch.tensor(density, dtype=torch.float32))

    @staticmethod
    def reachability(bank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(k-distance, local reachability density), (N,) each, of each row of bank among the
        others, as scikit-learn's LocalOutlierFactor computes them when it is fitted."""
        if k < 1:  # a bank of one image: no neighbours of its own
            return np.zeros(len(bank)), np.ones(len(bank))
        sq = (bank**2).sum(1)
        d2 = sq[:, None] + sq[None] - 2.0 * bank @ bank.T
        np.fill_diagonal(d2, np.inf)  # an image is not its own neighbour
        nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
        distance = np.sqrt(np.maximum(np.take_along_axis(d2, nearest, 1), 0.0))
        k_distance = distance.max(1)
        reach = np.maximum(distance, k_distance[nearest])
        return k_distance, 1.0 / (reach.mean(1) + LOF_EPSILON)

    @staticmethod
    def unit(maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C * h * w), each row scaled to unit length."""
        flat = maps.float().flatten(1)
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def project(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, k): the unit features' principal-component coordinates."""
        return (self.unit(maps) - self.mean) @ self.basis

    @classmethod
    def fit(
        cls,
        maps: torch.Tensor,
        *,
        neighbours: int = NEIGHBOURS,
        components: int = NEIGHBOUR_COMPONENTS,
    ) -> FeatureNeighbours:
        """The bank of the feature maps (N, C, h, w) of normal images, on their first
        `components` principal components (fewer than N and the features)."""
        with torch.no_grad():
            unit = cls.unit(maps).double().numpy()
        mean = unit.mean(0)
        k = min(components, unit.shape[1], len(unit) - 1)
        _, _, vt = np.linalg.svd(unit - mean, full_matrices=False)
        basis = vt[:k].T
        return cls((unit - mean) @ basis, mean, basis, neighbours)

    def distance_and_factor(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> the mean squared distance to the NEIGHBOURS nearest bank images (B,)
        and the local outlier factor of the same neighbours (B,), from one search."""
        z = self.project(maps)  # (B, k)
        d2 = (z * z).sum(1, keepdim=True) + self.bank_sq[None] - 2.0 * z @ self.bank.T
        nearest = torch.topk(d2.clamp_min(0.0), self.neighbours, dim=1, largest=False)
        reach = torch.maximum(nearest.values.sqrt(), self.k_distance[nearest.indices])
        factor = self.density[nearest.indices].mean(1) * (reach.mean(1) + LOF_EPSILON)
        return nearest.values.mean(1), factor

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.distance_and_factor(maps)[0]
