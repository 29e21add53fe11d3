"""The exported graph computes what the torch model computes, for any batch size, in one file."""

import numpy as np
import pytest
import torch

from detectors.bundle import Bundle
from detectors.runtime import OnnxSession
from training.train import model_from_checkpoint


def _batch(n=7):
    from detectors.sources import load_digits

    return load_digits("test").images[:n]


def test_pixelcnn_bundle_matches_torch_within_1e_4_bits_per_dim(pixelcnn_bundle):
    _, model, _ = model_from_checkpoint(pixelcnn_bundle.with_suffix(".pt"))
    _, local, _ = model_from_checkpoint(pixelcnn_bundle.with_name("pixelcnn.local.pt"))
    images = _batch()
    session = OnnxSession(Bundle.read(pixelcnn_bundle), device="cpu")
    out = session.run(images, ["nll_bits_per_dim", "nll_bits_map", "local_nll_bits_per_dim"])
    with torch.no_grad():
        x = torch.from_numpy(images)
        expected_map = model.nll_bits_map(x).numpy()
        expected_local = local.bits_per_dim(x).numpy()
    np.testing.assert_allclose(out["nll_bits_per_dim"], expected_map.mean((1, 2, 3)), atol=1e-4)
    np.testing.assert_allclose(out["nll_bits_map"], expected_map, atol=1e-3)
    np.testing.assert_allclose(out["local_nll_bits_per_dim"], expected_local, atol=1e-4)


def test_vae_bundle_matches_torch_within_1e_4_bits_per_dim(vae_bundle):
    _, model, _ = model_from_checkpoint(vae_bundle.with_suffix(".pt"))
    bundle = Bundle.read(vae_bundle)
    images = _batch()
    noise = (
        np.random.default_rng(0)
        .standard_normal((len(images), 3, model.cfg.latent))
        .astype(np.float32)
    )
    names = ["neg_elbo_bits_per_dim", "iwae_bits_per_dim", "recon_bits_map", "recon_mse"]
    got = OnnxSession(bundle, device="cpu").session.run(names, {"images": images, "noise": noise})
    with torch.no_grad():
        expected = model.scores(torch.from_numpy(images), torch.from_numpy(noise))
    for name, value, reference in zip(names, got, expected, strict=True):
        np.testing.assert_allclose(value, reference.numpy(), atol=1e-4, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_graph_has_a_dynamic_batch_axis(pixelcnn_bundle, vae_bundle, batch):
    images = np.resize(_batch(8), (batch, 1, 8, 8))
    for path in (pixelcnn_bundle, vae_bundle):
        bundle = Bundle.read(path)
        session = OnnxSession(bundle, device="cpu")
        output = "nll_bits_per_dim" if bundle.kind == "pixelcnn" else "iwae_bits_per_dim"
        assert session.run(images, [output])[output].shape == (batch,)


def test_a_bundle_is_one_file_with_no_external_data(pixelcnn_bundle, vae_bundle):
    import onnx

    for path in (pixelcnn_bundle, vae_bundle):
        model = onnx.load(path, load_external_data=False)
        weights = list(model.graph.initializer)
        assert weights, "the graph carries its weights"
        external = [t.name for t in weights if t.data_location == onnx.TensorProto.EXTERNAL]
        assert not external, f"weights stored outside the file: {external[:3]}"


def test_graph_outputs_are_per_image_scores_not_logits(pixelcnn_bundle):
    session = OnnxSession(Bundle.read(pixelcnn_bundle), device="cpu").session
    shapes = {o.name: o.shape for o in session.get_outputs()}
    assert len(shapes["nll_bits_per_dim"]) == 1
    assert shapes["nll_bits_map"][1:] == [1, 8, 8]  # (B, C, H, W): no 256-way axis leaves the graph


def test_checkpoint_rebuilds_its_own_model_with_weights_only(pixelcnn_bundle):
    kind, model, ckpt = model_from_checkpoint(pixelcnn_bundle.with_suffix(".pt"))
    assert kind == "pixelcnn"
    assert model.cfg.hidden == ckpt["model_config"]["hidden"] == 16


@pytest.mark.parametrize("kind", ["pixelcnn", "vae"])
def test_the_statistics_in_the_graph_match_torch(kind):
    """The local model, the latent mixture and the region densities run inside the one graph:
    ONNX Runtime gives torch's values, within 1e-4 bits/dim (relative 1e-4 for the distances
    and the latent density)."""
    from dataclasses import asdict

    import onnxruntime as ort

    from detectors.runtime import vae_noise
    from detectors.sources import load_digits
    from detectors.spec import NoiseSpec
    from training.densities import fit_statistics, local_config
    from training.export import export_graph_bytes, scoring_graph
    from training.models import VAE, PixelCNN, PixelCNNConfig, VAEConfig

    torch.manual_seed(0)
    train, test = load_digits("train").images[:300], _batch(16)
    noise, local = None, None
    if kind == "pixelcnn":
        model = PixelCNN(PixelCNNConfig(hidden=16, layers=2, kernel=3, head=32)).eval()
        local = PixelCNN(PixelCNNConfig(**local_config(asdict(model.cfg)))).eval()
    else:
        model = VAE(VAEConfig(height=8, width=8, latent=4, hidden=8)).eval()
        noise = NoiseSpec(input="noise", samples=4, latent_dim=4, seed=0)
    statistics = fit_statistics(kind, model, train, local=local, noise=noise)
    graph = scoring_graph(kind, model, statistics=statistics).eval()
    session = ort.InferenceSession(
        export_graph_bytes(kind, model, (1, 8, 8), statistics=statistics),
        providers=["CPUExecutionProvider"],
    )
    feeds = {"images": test}
    args = (torch.from_numpy(test),)
    if noise is not None:
        feeds["noise"] = vae_noise(noise, len(test))
        args += (torch.from_numpy(feeds["noise"]),)
    names = graph.output_names()
    new = {
        "local_nll_bits_per_dim",
        "nll_map_distance",
        "latent_nll_nats",
        "recon_map_distance",
        "encoder_distance",
        "encoder_coarse_distance",
        "encoder_mixture_nll_nats",
        "encoder_neighbour_distance",
        "encoder_outlier_factor",
    }
    assert new & set(names) == (
        {"local_nll_bits_per_dim", "nll_map_distance"}
        if kind == "pixelcnn"
        else {
            "latent_nll_nats",
            "recon_map_distance",
            "encoder_distance",
            "encoder_coarse_distance",
            "encoder_mixture_nll_nats",
            "encoder_neighbour_distance",
            "encoder_outlier_factor",
        }
    )
    got = dict(zip(names, session.run(names, feeds), strict=True))
    with torch.no_grad():
        expected = dict(zip(names, graph(*args), strict=True))
    for name in names:
        if name.endswith("_map"):
            continue
        tolerance = {"atol": 1e-4} if name.endswith("bits_per_dim") else {"rtol": 1e-4}
        np.testing.assert_allclose(got[name], expected[name].numpy(), **tolerance, err_msg=name)
