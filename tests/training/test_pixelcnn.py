"""The PixelCNN is autoregressive: each sub-pixel's distribution ignores that sub-pixel and all
later ones."""

import itertools

import pytest
import torch

from training.models import PixelCNN, PixelCNNConfig


def tiny(channels: int, **kw) -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(
        PixelCNNConfig(
            channels=channels, hidden=6 * channels, layers=3, kernel=3, head=6 * channels, **kw
        )
    ).eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_distribution_of_each_subpixel_ignores_itself_and_later_ones(channels):
    model = tiny(channels)
    height = width = 5
    x = torch.randint(0, 256, (1, channels, height, width), dtype=torch.uint8)
    with torch.no_grad():
        base = model(x)
        order = list(itertools.product(range(height), range(width), range(channels)))
        for i, j, c in order:
            changed = x.clone()
            changed[0, c, i, j] = (int(changed[0, c, i, j]) + 101) % 256
            out = model(changed)
            for i2, j2, c2 in order:
                if (i2, j2, c2) <= (i, j, c):
                    assert torch.equal(out[0, c2, :, i2, j2], base[0, c2, :, i2, j2]), (
                        f"p(x[{c2},{i2},{j2}]) changed when x[{c},{i},{j}] changed"
                    )


def test_receptive_field_has_no_blind_spot_above_right():
    # The original PixelCNN cannot see pixels above and to the right beyond its kernel; the gated
    # version with separate stacks must.
    model = tiny(1)
    x = torch.randint(0, 256, (1, 1, 6, 6), dtype=torch.uint8)
    changed = x.clone()
    changed[0, 0, 1, 5] ^= 255
    with torch.no_grad():
        assert not torch.equal(model(x)[0, 0, :, 3, 2], model(changed)[0, 0, :, 3, 2])


def test_later_channel_of_a_pixel_sees_earlier_channels_of_that_pixel():
    model = tiny(3)
    x = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    changed = x.clone()
    changed[0, 0, 2, 2] ^= 255  # red of pixel (2, 2)
    with torch.no_grad():
        assert not torch.equal(
            model(x)[0, 1, :, 2, 2], model(changed)[0, 1, :, 2, 2]
        )  # green sees red


def test_bits_per_dim_is_the_mean_of_the_bits_map():
    model = tiny(3)
    x = torch.randint(0, 256, (4, 3, 5, 6), dtype=torch.uint8)
    with torch.no_grad():
        bits_map = model.nll_bits_map(x)
        assert bits_map.shape == (4, 3, 5, 6)
        torch.testing.assert_close(model.bits_per_dim(x), bits_map.sum((1, 2, 3)) / (3 * 5 * 6))


def test_untrained_model_is_near_uniform_over_256_levels():
    with torch.no_grad():
        bpd = tiny(1).bits_per_dim(torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8))
    assert torch.all((bpd > 7.5) & (bpd < 8.5)), bpd  # log2(256) = 8


def test_samples_are_uint8_images_of_the_asked_shape():
    model = tiny(1)
    samples = model.sample(3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 4, 5)
    assert samples.dtype == torch.uint8


def test_class_conditional_model_needs_its_label():
    model = tiny(1, num_classes=3)
    x = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    with torch.no_grad():
        a = model.bits_per_dim(x, torch.tensor([0, 0]))
        b = model.bits_per_dim(x, torch.tensor([1, 1]))
    assert not torch.equal(a, b)
    with pytest.raises(AssertionError):
        model(x)
