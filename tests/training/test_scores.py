"""Scores that survive out-of-distribution inputs, end to end: the likelihood ratio travels in one
graph with both models, and torch computing the same graph gives the served scores."""

import numpy as np
import torch

from detectors import Bundle, Detector, write_bundle
from detectors.complexity import code_length_bits_per_dim
from detectors.runtime import scores_from_outputs, vae_noise
from training.export import PixelCNNGraph, VAEGraph
from training.train import model_from_checkpoint


def _models(path):
    _, model, _ = model_from_checkpoint(path.with_suffix(".pt"))
    background = path.with_name(path.stem + ".background.pt")
    return model, (model_from_checkpoint(background)[1] if background.exists() else None)


def test_likelihood_ratio_bundle_round_trip_matches_torch(pixelcnn_bundle, digits_test, tmp_path):
    bundle = Bundle.read(pixelcnn_bundle)
    spec = bundle.spec.scores["likelihood_ratio"]
    assert spec.kind == "difference"
    assert spec.minus_output == "background_nll_bits_per_dim"
    copy = write_bundle(bundle.model_bytes, bundle.spec, tmp_path / "copy.onnx")
    detector = Detector.load(copy.path, device="cpu")
    images = digits_test.images[:32]
    served = detector.raw_scores(images, ["likelihood_ratio", "nll"])
    model, background = _models(pixelcnn_bundle)
    with torch.no_grad():
        x = torch.from_numpy(images)
        expected = (model.bits_per_dim(x) - background.bits_per_dim(x)).double().numpy()
    np.testing.assert_allclose(served["likelihood_ratio"], expected, atol=1e-4)
    result = detector.score(images, score="likelihood_ratio", alpha=0.2)
    np.testing.assert_array_equal(result.is_anomaly, result.p_values <= 0.2)


def _torch_outputs(kind, model, background, images, spec):
    with torch.no_grad():
        x = torch.from_numpy(images)
        if kind == "pixelcnn":
            nll, _ = PixelCNNGraph(model)(x)
            outputs = {"nll_bits_per_dim": nll.numpy()}
            if background is not None:
                outputs["background_nll_bits_per_dim"] = background.bits_per_dim(x).numpy()
            return outputs
        noise = torch.from_numpy(vae_noise(spec.noise, len(images)))
        neg_elbo, iwae, _, mse, *_ = VAEGraph(model)(x, noise)
        return {
            "neg_elbo_bits_per_dim": neg_elbo.numpy(),
            "iwae_bits_per_dim": iwae.numpy(),
            "recon_mse": mse.numpy(),
        }


def test_torch_on_the_exported_modules_gives_every_served_score(
    pixelcnn_bundle, vae_bundle, digits_test
):
    # The quality benchmark scores on GPU with torch this way; it must be the served math.
    images = digits_test.images[:24]
    codes = {c: code_length_bits_per_dim(images, c) for c in ("zlib", "png")}
    for path in (pixelcnn_bundle, vae_bundle):
        detector = Detector.load(path, device="cpu")
        model, background = _models(path)
        outputs = _torch_outputs(detector.kind, model, background, images, detector.spec)
        mine = scores_from_outputs(
            detector.spec.scores, detector.score_names, outputs, code_lengths=codes
        )
        served = detector.raw_scores(images)
        for name in detector.score_names:
            np.testing.assert_allclose(mine[name], served[name], atol=1e-4, err_msg=name)
