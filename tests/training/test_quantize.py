"""`training.quantize` on the tiny session bundles: the parity gate, the search for layers to keep
in fp32, the Precision record, and references that come from the quantised graph."""

from __future__ import annotations

import onnx
import pytest

from detectors import Detector
from detectors.bundle import Bundle, write_bundle
from detectors.fitting import recalibrate
from detectors.sources import load
from training.quantize import Budget, ParityError, quantize_bundle, split

LOOSE = Budget(mean_abs_delta_bits_per_dim=1.0, auroc_change=1.0)


@pytest.fixture(scope="module")
def normal():
    return load("digits:test").with_classes([0, 1, 2, 3, 4])


@pytest.fixture(scope="module")
def anomalous():
    return load("digits:test").with_classes([5, 6, 7, 8, 9])


@pytest.fixture(scope="module")
def int8_vae(vae_bundle, normal, anomalous, tmp_path_factory):
    """(fp32 bundle, int8 bundle, summary): the VAE quantised within a loose budget."""
    fp32 = Bundle.read(vae_bundle)
    graph, spec, summary = quantize_bundle(
        fp32, normal, anomalous=anomalous, range_images=64, budget=LOOSE, search=False
    )
    out = tmp_path_factory.mktemp("int8") / "vae-int8.onnx"
    return fp32, write_bundle(graph, spec, out), summary


def test_the_graph_is_int8_and_keeps_its_inputs_and_outputs(int8_vae):
    fp32, int8, _ = int8_vae
    graph = onnx.load_from_string(int8.model_bytes).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    before = onnx.load_from_string(fp32.model_bytes).graph
    assert [i.name for i in graph.input] == [i.name for i in before.input]
    assert [o.name for o in graph.output] == [o.name for o in before.output]


def test_the_metadata_records_precision_and_measured_parity(int8_vae, normal):
    fp32, int8, summary = int8_vae
    precision = int8.spec.precision
    assert fp32.spec.precision is None
    assert precision.weights == "int8"
    assert precision.activations == "uint8"
    assert precision.source_sha256 == fp32.sha256
    assert precision.quantized_nodes > 0
    assert precision.n_range_images == 64
    parity = precision.parity
    assert parity.score == "iwae"
    assert parity.n_images == len(normal) - 64
    assert 0 < parity.mean_abs_delta_bits_per_dim <= parity.max_abs_delta_bits_per_dim
    assert parity.budget_mean_abs_delta_bits_per_dim == 1.0
    assert parity.auroc_score == fp32.spec.default_score
    assert parity.auroc_change == pytest.approx(parity.auroc_quantized - parity.auroc_fp32)
    assert summary["precision"] == precision.to_json()
    # and it survives a write and a read
    assert Bundle.from_bytes(int8.model_bytes).spec.precision == precision


def test_references_come_from_the_quantised_graph_on_held_out_images(int8_vae, normal):
    fp32, int8, _ = int8_vae
    detector = Detector(int8, device="cpu")
    checked = normal.__class__(detector.check_images(normal.images), None, normal.source)
    ranges, held_out = split(checked, 64)
    # The product's calibration path, run again on the int8 graph: the same references.
    again, _ = recalibrate(int8, held_out.images, device="cpu")
    for name, score in int8.spec.scores.items():
        assert score.reference == again.scores[name].reference, name
    assert int8.spec.calibration.n_reference == len(held_out.images)
    # The range images are not among them, and the fp32 graph's references differ.
    assert int8.spec.calibration.n_reference == len(normal) - len(ranges.images)
    from_fp32, _ = recalibrate(fp32, held_out.images, device="cpu")
    assert from_fp32.scores["iwae"].reference != int8.spec.scores["iwae"].reference


def test_a_graph_over_budget_is_refused(vae_bundle, normal):
    impossible = Budget(mean_abs_delta_bits_per_dim=0.0)
    with pytest.raises(ParityError, match="over the parity budget"):
        quantize_bundle(
            Bundle.read(vae_bundle), normal, range_images=64, budget=impossible, search=False
        )


def test_the_search_keeps_the_most_harmful_layers_in_fp32_until_within_budget(int8_vae, normal):
    fp32, int8, _ = int8_vae
    whole = int8.spec.precision.parity.mean_abs_delta_bits_per_dim
    budget = Budget(mean_abs_delta_bits_per_dim=whole / 2)
    graph, spec, summary = quantize_bundle(fp32, normal, range_images=64, budget=budget)
    precision = spec.precision
    assert precision.fp32_nodes  # at least one layer went back to fp32
    assert precision.parity.mean_abs_delta_bits_per_dim <= whole / 2
    assert [t["fp32_nodes"] for t in summary["tried"]][0] == []
    assert summary["tried"][-1]["fp32_nodes"] == list(precision.fp32_nodes)
    kept_in_fp32 = onnx.load_from_string(graph).graph.node
    assert {n.name for n in kept_in_fp32} >= set(precision.fp32_nodes)


def test_an_int8_bundle_is_not_quantised_again(int8_vae, normal):
    _, int8, _ = int8_vae
    with pytest.raises(ValueError, match="already int8"):
        quantize_bundle(int8, normal, budget=LOOSE, search=False)


def test_parity_is_measured_on_the_images_the_references_use(int8_vae):
    _, int8, _ = int8_vae
    parity = int8.spec.precision.parity
    assert parity.data == int8.spec.calibration.data
    assert parity.n_images == int8.spec.calibration.n_reference
