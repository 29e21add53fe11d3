"""Scores that see past local texture, end to end: the local-versus-full ratio travels in one graph
with both models, and the combined default is computed from its members as served."""

import numpy as np
import torch

from detectors import Bundle, Detector, write_bundle
from detectors.combination import combine
from training.train import model_from_checkpoint


def test_local_ratio_bundle_round_trip_matches_torch(pixelcnn_bundle, digits_test, tmp_path):
    bundle = Bundle.read(pixelcnn_bundle)
    spec = bundle.spec.scores["local_ratio"]
    assert spec.kind == "difference"
    assert spec.minus_output == "local_nll_bits_per_dim"
    copy = write_bundle(bundle.model_bytes, bundle.spec, tmp_path / "copy.onnx")
    detector = Detector.load(copy.path, device="cpu")
    images = digits_test.images[:32]
    served = detector.raw_scores(images, ["local_ratio", "nll"])
    _, model, _ = model_from_checkpoint(pixelcnn_bundle.with_suffix(".pt"))
    _, local, _ = model_from_checkpoint(pixelcnn_bundle.with_name("pixelcnn.local.pt"))
    assert (local.cfg.layers, local.cfg.kernel) == (1, 3)
    with torch.no_grad():
        x = torch.from_numpy(images)
        expected = (model.bits_per_dim(x) - local.bits_per_dim(x)).double().numpy()
    np.testing.assert_allclose(served["local_ratio"], expected, atol=1e-4)
    result = detector.score(images, score="local_ratio", alpha=0.2)
    np.testing.assert_array_equal(result.is_anomaly, result.p_values <= 0.2)


def test_the_default_is_the_combined_score_of_its_members(pixelcnn_bundle, vae_bundle, digits_test):
    images = digits_test.images[:24]
    for path in (pixelcnn_bundle, vae_bundle):
        detector = Detector.load(path, device="cpu")
        assert detector.default_score == "combined"
        members = detector.spec.scores["combined"].statistics
        raw = detector.raw_scores(images, list(members))
        combined = detector.spec.scores["combined"]
        references = combined.references(detector.spec.scores)
        result = detector.score(images)
        np.testing.assert_allclose(result.scores, combine("fisher", raw, references))
        n = detector.spec.calibration.n_reference
        assert n == detector.spec.training.extra["n_calibration"]
        assert len(detector.reference("combined")) == n  # every calibration image
        if len(members) > 1:  # the members inside the combination: the validation split
            n_validation = detector.spec.training.extra["n_validation"]
            assert {len(r) for r in combined.member_references.values()} == {n_validation}
            for m in members:  # each member's own p-value: every calibration image
                assert len(detector.reference(m)) == n
        else:  # one member: its own reference, every calibration image
            assert combined.member_references == {}
            assert len(references[members[0]]) == n
