"""The densities the graph computes are the statistics they claim to be: checked against
scikit-learn's Ledoit-Wolf Mahalanobis distance on the same pooled features, on arrays."""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

from training.models.density import (
    FEATURE_COMPONENTS,
    FEATURE_MIXTURE_COMPONENTS,
    CoarseFeatureDensity,
    FeatureDensity,
    FeatureMixture,
    FeatureNeighbours,
    RegionDensity,
    pooling_matrix,
)


def _maps(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.gamma(2.0, 1.0, (n, channels, size, size)).astype(np.float32))


@pytest.mark.parametrize(
    ("density_class", "grid"), [(FeatureDensity, 3), (CoarseFeatureDensity, 2)]
)
def test_feature_density_is_the_mahalanobis_distance_of_region_means_per_channel(
    density_class, grid
):
    train, test = _maps(300, 4, 7, 0), _maps(20, 4, 7, 1)
    density = density_class.fit(train)
    # Each channel's means over grid x grid regions of the 7x7 map, as adaptive pooling bins them.
    expected_train = torch.nn.functional.adaptive_avg_pool2d(train, grid).flatten(1).double()
    expected_test = torch.nn.functional.adaptive_avg_pool2d(test, grid).flatten(1).double()
    reference = LedoitWolf().fit(expected_train.numpy())
    with torch.no_grad():
        got = density(test).double().numpy()
    np.testing.assert_allclose(got, reference.mahalanobis(expected_test.numpy()), rtol=1e-3)
    assert density.mean.shape == (4 * grid * grid,)


def test_feature_density_ranks_shifted_features_as_unusual():
    train = _maps(300, 4, 7, 0)
    density = FeatureDensity.fit(train)
    shifted = train[:50].clone()
    shifted[:, 0, :3, :3] += 10.0  # one channel brighter in one corner
    with torch.no_grad():
        assert density(shifted).min() > density(train[:50]).max()


def test_a_small_feature_map_pools_into_no_more_regions_than_it_has():
    density = FeatureDensity.fit(_maps(100, 3, 2, 0))  # 2x2 maps, grid 3
    assert density.pooling.shape == (4, 4)
    assert density.mean.shape == (3 * 4,)


@pytest.mark.parametrize("maps", [1, 2])
def test_region_density_is_the_mahalanobis_distance_of_pooled_log_maps(maps):
    train = [_maps(300, 1, 14, s) for s in range(maps)]
    test = [_maps(10, 1, 14, 10 + s) for s in range(maps)]
    density = RegionDensity.fit(*train)
    pooling = pooling_matrix(14, 14)

    def features(ms):
        return np.concatenate(
            [np.log(m.double().numpy() + 0.01).mean(1).reshape(len(m), -1) @ pooling for m in ms],
            axis=1,
        )

    reference = LedoitWolf().fit(features(train))
    with torch.no_grad():
        got = density(*test).double().numpy()
    np.testing.assert_allclose(got, reference.mahalanobis(features(test)), rtol=1e-3)


def _clustered_maps(n: int, seed: int) -> torch.Tensor:
    """(n, 8, 7, 7) maps whose 3x3 region means form two clusters."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(0.0, 0.3, (n, 8, 7, 7))
    maps[: n // 2, :4] += 3.0
    return torch.from_numpy(maps.astype(np.float32))


def test_feature_mixture_is_a_bic_chosen_mixture_of_the_principal_components():
    train, test = _clustered_maps(400, 0), _clustered_maps(40, 1)
    mixture = FeatureMixture.fit(train)
    features = torch.nn.functional.adaptive_avg_pool2d(train, 3).flatten(1).double().numpy()
    k = min(FEATURE_COMPONENTS, features.shape[1])
    pca = PCA(k).fit(features)
    codes = pca.transform(features)
    bic = {
        c: GaussianMixture(c, covariance_type="full", reg_covar=1e-4, random_state=0).fit(codes)
        for c in FEATURE_MIXTURE_COMPONENTS
    }
    best = min(bic.values(), key=lambda g: g.bic(codes))
    assert mixture.mixture.components == best.n_components
    assert best.n_components > 1  # two clusters: one Gaussian is not the BIC's choice
    expected = -best.score_samples(
        pca.transform(torch.nn.functional.adaptive_avg_pool2d(test, 3).flatten(1).double())
    )
    with torch.no_grad():
        got = mixture(test).double().numpy()
    # The same density whatever the principal axes' signs: up to float32 in the graph.
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-2)


def test_feature_mixture_ranks_features_off_both_clusters_as_unusual():
    train = _clustered_maps(400, 0)
    mixture = FeatureMixture.fit(train)
    between = train[:50].clone()
    between[:, :4] -= 1.5  # halfway between the two clusters, where neither has mass
    with torch.no_grad():
        assert mixture(between).min() > mixture(train[:50]).max()


def test_feature_mixture_keeps_fewer_components_than_images():
    mixture = FeatureMixture.fit(_clustered_maps(10, 0))
    assert mixture.basis.shape == (8 * 9, 9)


def _pattern_maps(n: int, seed: int, channels: int = 4, noise: float = 0.2) -> torch.Tensor:
    """(n, channels, 7, 7) maps, each one of two fixed random patterns (half and half)
    times a random brightness, plus noise: two clusters of directions."""
    patterns = np.random.default_rng(100).normal(0.0, 1.0, (2, channels, 7, 7))
    rng = np.random.default_rng(seed)
    which = np.arange(n) % 2
    maps = patterns[which] * rng.uniform(1.0, 2.0, (n, 1, 1, 1))
    maps += rng.normal(0.0, noise, maps.shape)
    return torch.from_numpy(maps.astype(np.float32))


@pytest.mark.parametrize("components", [4 * 49, 16])
def test_feature_neighbours_is_the_cosine_distance_to_the_nearest_training_images(components):
    """With every principal component kept, exactly scikit-learn's cosine neighbours (whose
    distance is 1 - cos; ours, between unit vectors, 2 - 2 cos); with fewer, scikit-learn's
    Euclidean neighbours of the unit vectors' principal-component coordinates, which a
    projection can only bring closer."""
    from sklearn.neighbors import NearestNeighbors

    train, test = _pattern_maps(300, 0), _pattern_maps(30, 1)
    neighbours = FeatureNeighbours.fit(train, neighbours=5, components=components)
    assert neighbours.basis.shape == (4 * 49, components)
    flat_train, flat_test = (m.flatten(1).double().numpy() for m in (train, test))
    knn = NearestNeighbors(n_neighbors=5, metric="cosine").fit(flat_train)
    cosine = 2.0 * knn.kneighbors(flat_test)[0].mean(1)
    unit_train, unit_test = (
        f / np.linalg.norm(f, axis=1, keepdims=True) for f in (flat_train, flat_test)
    )
    pca = PCA(components).fit(unit_train)
    knn = NearestNeighbors(n_neighbors=5).fit(pca.transform(unit_train))
    projected = (knn.kneighbors(pca.transform(unit_test))[0] ** 2).mean(1)
    with torch.no_grad():
        got = neighbours(test).double().numpy()
    np.testing.assert_allclose(got, projected, rtol=1e-4, atol=1e-5)
    if components == 4 * 49:
        np.testing.assert_allclose(got, cosine, rtol=1e-4, atol=1e-5)
    else:
        assert np.all(got <= cosine + 1e-5)
        assert np.any(got < cosine - 1e-3)


def test_feature_neighbours_ranks_features_off_both_clusters_as_unusual():
    train = _pattern_maps(400, 0)
    neighbours = FeatureNeighbours.fit(train)
    between = _pattern_maps(50, 2)
    between = 0.5 * (between + between.roll(1, 0))  # half one pattern, half the other
    with torch.no_grad():
        assert neighbours(between).min() > neighbours(_pattern_maps(50, 3)).max()


def test_feature_neighbours_keeps_at_most_its_bank():
    neighbours = FeatureNeighbours.fit(_pattern_maps(4, 0), neighbours=5)
    assert neighbours.neighbours == 4
    assert neighbours.bank.shape == (4, 3)


@pytest.mark.parametrize(("components", "neighbours"), [(4 * 49, 20), (16, 5)])
def test_feature_neighbours_outlier_factor_is_scikit_learns_local_outlier_factor(
    components, neighbours
):
    """scikit-learn's LocalOutlierFactor (novelty mode) on the unit features' principal-component
    coordinates: its own neighbour search, reachability distances and densities."""
    from sklearn.neighbors import LocalOutlierFactor

    train, test = _pattern_maps(300, 0), _pattern_maps(30, 1)
    between = _pattern_maps(10, 2)
    test = torch.cat([test, 0.5 * (between + between.roll(1, 0))])
    fitted = FeatureNeighbours.fit(train, neighbours=neighbours, components=components)
    unit_train, unit_test = (FeatureNeighbours.unit(m).double().numpy() for m in (train, test))
    pca = PCA(components).fit(unit_train)
    lof = LocalOutlierFactor(n_neighbors=neighbours, novelty=True).fit(pca.transform(unit_train))
    expected = -lof.score_samples(pca.transform(unit_test))
    with torch.no_grad():
        distance, factor = (t.double().numpy() for t in fitted.distance_and_factor(test))
        np.testing.assert_allclose(distance, fitted(test).double().numpy())
    np.testing.assert_allclose(factor, expected, rtol=1e-4)
    assert factor[30:].min() > factor[:30].max()  # off both clusters, the factor is far above 1


def test_feature_neighbours_outlier_factor_of_a_tiny_bank_is_finite():
    for n in (1, 4):
        fitted = FeatureNeighbours.fit(_pattern_maps(n, 0), neighbours=5)
        with torch.no_grad():
            assert torch.isfinite(fitted.distance_and_factor(_pattern_maps(3, 1))[1]).all()
