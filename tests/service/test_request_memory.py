"""What parsing a JSON body may cost: bounded by the model's input size, not by the body limit.

Memory is measured with tracemalloc (numpy reports its buffers to it too), in-process, on the
parsers themselves: deterministic, and nothing of the HTTP client's own copies counts.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from detectors.images import InputSpec
from service.errors import ApiError
from service.requests import Limits, from_json
from service.settings import Settings
from service.v2_requests import parse_request

BODY_LIMIT = 16 * 2**20  # the default max_body_bytes
MiB = 2**20


def _peak_bytes(function, *args) -> tuple[int, object]:
    tracemalloc.start()
    try:
        try:
            outcome = function(*args)
        except ApiError as error:
            outcome = error
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def _flat_zeros(prefix: bytes, suffix: bytes) -> bytes:
    """A body just under the limit: one flat array of zeros."""
    count = (BODY_LIMIT - len(prefix) - len(suffix) - 16) // 2
    return prefix + b"0," * count + b"0" + suffix


@pytest.fixture
def limits(tmp_path) -> Limits:
    spec = InputSpec(channels=1, height=8, width=8)
    return Limits.of(spec, Settings(models_dir=tmp_path))


def test_a_flat_array_under_the_body_limit_is_refused_before_parsing(limits):
    spec = InputSpec(channels=1, height=8, width=8)
    body = _flat_zeros(b'{"images": [[', b"]]}")  # one image, one flat array
    peak, outcome = _peak_bytes(from_json, body, spec, limits)
    assert isinstance(outcome, ApiError)
    assert (outcome.status, outcome.code) == (413, "too_many_values")
    assert peak < 1 * MiB  # it used to be about 150 MB


def test_v2_data_under_the_body_limit_is_refused_before_parsing(client, limits):
    model = client.app.state.registry.get("vae")
    body = _flat_zeros(
        b'{"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 1, 8, 8], "data": [',
        b"]}]}",
    )
    peak, outcome = _peak_bytes(parse_request, body, None, model, limits)
    assert isinstance(outcome, ApiError)
    assert (outcome.status, outcome.code) == (413, "too_many_values")
    assert peak < 1 * MiB


def test_the_largest_accepted_json_body_costs_memory_in_proportion_to_it(limits):
    spec = InputSpec(channels=1, height=8, width=8)
    images = np.full((limits.max_images, 8, 8), 255).tolist()
    body = json.dumps({"images": images}).encode()
    peak, parsed = _peak_bytes(from_json, body, spec, limits)
    assert parsed.images.shape == (limits.max_images, 1, 8, 8)
    assert peak < 20 * len(body)
