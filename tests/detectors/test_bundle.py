"""A bundle carries its own description; anything missing, unknown or inconsistent is refused."""

import json
import subprocess
import sys

import numpy as np
import pytest

from detectors import Bundle, BundleError, Detector, write_bundle
from detectors.bundle import METADATA_KEY
from detectors.onnxfile import read_metadata_props, with_metadata_props


def _rewrite(path, tmp_path, change):
    bundle = Bundle.read(path)
    meta = bundle.spec.to_json()
    change(meta)
    out = tmp_path / "changed.onnx"
    props = {METADATA_KEY: json.dumps(meta)}
    out.write_bytes(with_metadata_props(bundle.model_bytes, props))
    return out


def test_metadata_round_trips_through_the_file(pixelcnn_bundle, tmp_path):
    bundle = Bundle.read(pixelcnn_bundle)
    copy = write_bundle(bundle.model_bytes, bundle.spec, tmp_path / "copy.onnx")
    assert Bundle.read(tmp_path / "copy.onnx").spec == bundle.spec == copy.spec
    assert copy.model_bytes == bundle.model_bytes  # the same JSON, byte for byte


def test_rewriting_metadata_leaves_the_rest_of_the_file_byte_for_byte(pixelcnn_bundle):
    data = pixelcnn_bundle.read_bytes()
    rewritten = with_metadata_props(data, {"a": "1", "b": "ünïcode"})
    assert read_metadata_props(rewritten) == {"a": "1", "b": "ünïcode"}
    stripped = with_metadata_props(data, {})
    assert with_metadata_props(rewritten, {}) == stripped
    assert len(stripped) < len(data)


def test_metadata_props_read_by_onnxruntime_match(pixelcnn_bundle):
    import onnxruntime as ort

    session = ort.InferenceSession(str(pixelcnn_bundle), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map == read_metadata_props(
        pixelcnn_bundle.read_bytes()
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(format_version=2), "unknown metadata format_version 2"),
        (lambda m: m.pop("scores"), "lacks 'scores'"),
        (lambda m: m["model"].update(kind="gan"), "model: kind 'gan'"),
        (lambda m: m.update(default_score="nope"), "default_score 'nope'"),
        (lambda m: m["scores"]["nll"].update(reference=[3.0, 1.0]), "not sorted"),
        (lambda m: m["scores"]["nll"].update(kind="magic"), "unknown kind"),
        (lambda m: m["input"].update(color_mode="RGB"), "color mode RGB needs 3"),
        (lambda m: m["calibration"].update(alpha=1.5), "alpha"),
    ],
)
def test_bad_metadata_is_refused_with_a_clear_error(pixelcnn_bundle, tmp_path, change, message):
    with pytest.raises(BundleError, match=message):
        Bundle.read(_rewrite(pixelcnn_bundle, tmp_path, change))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda m: (m["input"].update(height=9), m["heatmap"].update(mean=None, std=None)),
            "disagrees with metadata",
        ),
        (lambda m: m["scores"]["nll"].update(output="logits"), "outputs \\['logits'\\]"),
        (lambda m: m["input"].update(name="pixels"), "metadata names input 'pixels'"),
        (
            lambda m: m.update(noise={"input": "noise", "samples": 1, "latent_dim": 2, "seed": 0}),
            "graph inputs",
        ),
    ],
)
def test_metadata_that_disagrees_with_the_graph_is_refused(
    pixelcnn_bundle, tmp_path, change, message
):
    with pytest.raises(BundleError, match=message):
        Detector.load(_rewrite(pixelcnn_bundle, tmp_path, change), device="cpu")


def test_files_that_are_not_bundles_are_refused(pixelcnn_bundle, tmp_path):
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff\xff not protobuf")
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(with_metadata_props(pixelcnn_bundle.read_bytes(), {}))
    for path, message in [
        (empty, "empty file"),
        (junk, "ONNX"),
        (plain, "not exported by normalcy"),
        (tmp_path / "missing.onnx", "cannot read"),
    ]:
        with pytest.raises(BundleError, match=message):
            Bundle.read(path)


def test_an_uncalibrated_bundle_cannot_score(pixelcnn_bundle, tmp_path):
    def clear(meta):
        for spec in meta["scores"].values():
            spec["reference"] = []

    with pytest.raises(BundleError, match="no calibration reference"):
        Detector.load(_rewrite(pixelcnn_bundle, tmp_path, clear))


def test_a_damaged_graph_with_intact_metadata_is_refused(pixelcnn_bundle, tmp_path):
    bundle = Bundle.read(pixelcnn_bundle)
    graph = with_metadata_props(bundle.model_bytes, {})
    damaged = graph[: len(graph) // 2]  # the metadata alone cannot vouch for the file
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(
        with_metadata_props(b"", {METADATA_KEY: json.dumps(bundle.spec.to_json())}) + damaged
    )
    with pytest.raises(BundleError):
        Detector.load(broken, device="cpu")


def test_importing_detectors_does_not_import_torch():
    code = (
        "import sys, detectors, detectors.runtime, detectors.sources, detectors.evaluation; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_version_is_the_content_hash(pixelcnn_bundle):
    import hashlib

    bundle = Bundle.read(pixelcnn_bundle)
    assert bundle.sha256 == hashlib.sha256(pixelcnn_bundle.read_bytes()).hexdigest()
    assert np.all(np.diff(bundle.reference("nll")) >= 0)
