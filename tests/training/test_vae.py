"""The VAE's bounds are proper discrete likelihood bounds in bits/dim."""

import math

import pytest
import torch

from training.models import VAE, VAEConfig
from training.models.vae import discretized_logistic_log_prob


@pytest.mark.parametrize(
    ("mean", "log_scale"), [(0.0, -2.0), (0.9, -4.0), (-1.2, 0.5), (0.3, -7.0)]
)
def test_discretized_logistic_sums_to_one_over_the_256_levels(mean, log_scale):
    levels = torch.arange(256).view(256, 1)
    log_p = discretized_logistic_log_prob(
        levels, torch.full((256, 1), mean), torch.full((256, 1), log_scale)
    )
    assert torch.logsumexp(log_p.double().flatten(), 0).exp().item() == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("likelihood", ["logistic", "categorical"])
def test_bounds_and_maps_have_per_image_shapes_and_are_finite(likelihood):
    torch.manual_seed(0)
    model = VAE(VAEConfig(height=8, width=8, latent=3, hidden=4, likelihood=likelihood)).eval()
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        eps = torch.randn(5, 1, 3)
        neg_elbo, iwae, bits_map, mse = model.scores(x, eps)
    assert bits_map.shape == (5, 1, 8, 8)
    assert mse.shape == (5,)
    assert torch.all(torch.isfinite(neg_elbo))
    assert torch.all(torch.isfinite(iwae))


def test_more_importance_samples_tighten_the_bound():
    torch.manual_seed(0)
    model = VAE(VAEConfig(height=8, width=8, latent=3, hidden=4)).eval()
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        _, iwae_1, _, _ = model.scores(x.repeat(64, 1, 1, 1), torch.randn(16 * 64, 1, 3))
        _, iwae_64, _, _ = model.scores(x, torch.randn(16, 64, 3))
    # E[IWAE_64] <= E[IWAE_1] (bounds on -log p, in bits/dim): tighter is lower.
    assert iwae_64.mean() <= iwae_1.view(64, 16).mean(0).mean() + 1e-6


def test_scores_are_deterministic_given_the_noise():
    torch.manual_seed(0)
    model = VAE(VAEConfig(height=8, width=8, latent=3, hidden=4)).eval()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    eps = torch.randn(4, 5, 3)
    with torch.no_grad():
        first, second = model.scores(x, eps), model.scores(x, eps)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_negative_elbo_upper_bounds_uniform_bits_for_untrained_model_roughly():
    torch.manual_seed(0)
    model = VAE(VAEConfig(height=8, width=8, latent=3, hidden=4, likelihood="categorical")).eval()
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        loss = model.loss(x)
    assert torch.all(loss > math.log2(256) - 0.5)  # a near-uniform decoder costs about 8 bits/dim


def test_decoded_samples_are_uint8_images():
    model = VAE(VAEConfig(height=8, width=8, latent=3, hidden=4))
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8)
    assert samples.dtype == torch.uint8
