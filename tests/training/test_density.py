"""The densities the graph computes are the statistics they claim to be: checked against
scikit-learn's Ledoit-Wolf Mahalanobis distance on the same pooled features, on arrays."""

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from training.models.density import FeatureDensity, RegionDensity, pooling_matrix


def _maps(n: int, channels: int, size: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.gamma(2.0, 1.0, (n, channels, size, size)).astype(np.float32))


def test_feature_density_is_the_mahalanobis_distance_of_region_means_per_channel():
    train, test = _maps(300, 4, 7, 0), _maps(20, 4, 7, 1)
    density = FeatureDensity.fit(train)
    # Each channel's means over 3x3 regions of the 7x7 map, as adaptive pooling bins them.
    expected_train = torch.nn.functional.adaptive_avg_pool2d(train, 3).flatten(1).double()
    expected_test = torch.nn.functional.adaptive_avg_pool2d(test, 3).flatten(1).double()
    reference = LedoitWolf().fit(expected_train.numpy())
    with torch.no_grad():
        got = density(test).double().numpy()
    np.testing.assert_allclose(got, reference.mahalanobis(expected_test.numpy()), rtol=1e-3)
    assert density.mean.shape == (4 * 9,)


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
