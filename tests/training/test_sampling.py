"""The cached PixelCNN sampler is exact: it computes the network's own logits and, with the same
generator, draws the same images as the naive sampler (which reruns the net for every sub-pixel)."""

import pytest
import torch

from training.models import PixelCNN, PixelCNNConfig
from training.models.sampling import draw_levels, sample_naive, teacher_forced_logits

# (channels, num_classes, kernel, label maps): unconditional, conditional with a bias only, and
# conditional with per-class spatial maps
CASES = [(1, 0, 3, 0), (3, 0, 3, 0), (1, 4, 5, 0), (3, 3, 5, 0), (1, 4, 3, 2), (3, 2, 5, 3)]


def model(channels: int, num_classes: int, kernel: int, maps: int = 0) -> PixelCNN:
    torch.manual_seed(0)
    size = {"height": 6, "width": 5, "label_maps": maps} if maps else {}
    net = PixelCNN(
        PixelCNNConfig(
            channels=channels,
            hidden=6 * channels,
            layers=3,
            kernel=kernel,
            head=8 * channels,
            num_classes=num_classes,
            **size,
        )
    ).eval()
    with torch.no_grad():  # non-zero biases, so a wrongly placed bias shows
        for p in net.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    return net


def labels(num_classes: int, n: int):
    return torch.arange(n) % num_classes if num_classes else None


@pytest.mark.parametrize(("channels", "num_classes", "kernel", "maps"), CASES)
def test_cached_sampler_computes_the_forward_pass_logits(channels, num_classes, kernel, maps):
    net = model(channels, num_classes, kernel, maps)
    x = torch.randint(0, 256, (3, channels, 6, 5), dtype=torch.uint8)
    y = labels(num_classes, 3)
    with torch.no_grad():
        expected = net(x, y)
    assert torch.allclose(teacher_forced_logits(net, x, y), expected, atol=1e-5)


@pytest.mark.parametrize(("channels", "num_classes", "kernel", "maps"), CASES)
def test_cached_sampler_draws_what_the_naive_sampler_draws(channels, num_classes, kernel, maps):
    net = model(channels, num_classes, kernel, maps)
    y = labels(num_classes, 4)
    naive = sample_naive(net, 4, 5, 4, label=y, generator=torch.Generator().manual_seed(3))
    fast = net.sample(4, 5, 4, label=y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fast, naive)


def test_same_generator_same_samples_and_temperature_changes_them():
    net = model(1, 0, 3)
    a = net.sample(3, 4, 4, generator=torch.Generator().manual_seed(0))
    b = net.sample(3, 4, 4, generator=torch.Generator().manual_seed(0))
    cold = net.sample(3, 4, 4, temperature=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert not torch.equal(a, cold)


def test_draw_levels_follows_the_softmax():
    logits = torch.log(torch.tensor([[0.0, 0.25, 0.75] + [0.0] * 253]))
    draws = draw_levels(logits.expand(20000, -1), generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {1, 2}
    assert abs((draws == 2).float().mean().item() - 0.75) < 0.015


def test_low_temperature_draws_the_most_likely_level():
    logits = torch.randn(50, 256, generator=torch.Generator().manual_seed(1))
    draws = draw_levels(logits, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws.long(), logits.argmax(1))
