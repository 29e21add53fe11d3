"""The bundle's metadata as typed records: bundles written before the records existed still load
and write back the same JSON; unknown fields survive; a new score kind is one registered class."""

import json
from dataclasses import FrozenInstanceError, dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from detectors import Bundle, BundleError, Detector, score_kinds, write_bundle
from detectors.bundle import METADATA_KEY
from detectors.onnxfile import with_metadata_props
from detectors.runtime import scores_from_outputs
from detectors.score_kinds import ScoreSpec, score_kind
from detectors.spec import BundleSpec

# Metadata of bundles that the code before the typed records trained and calibrated (a PixelCNN
# with a background model, calibrated with labelled anomalies; a VAE; a conditional VAE).
NEW_VAE_SCORES = (
    "encoder_coarse_distance",
    "encoder_distance",
    "encoder_mixture_nll",
    "encoder_neighbour_distance",
    "encoder_outlier_factor",
    "kl",
    "latent_nll",
    "posterior_spread",
    "recon_map_distance",
)
SCORE_KEYS = ("kind", "output", "reference", "description", "units", "direction")
MAIN = json.loads((Path(__file__).parent / "data" / "main_metadata.json").read_text())


def _keys(document: dict, prefix: str = "") -> set[str]:
    """Every key path of a JSON document."""
    keys = set()
    for key, value in document.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


@pytest.mark.parametrize("name", sorted(MAIN))
def test_metadata_written_before_reads_and_writes_back_unchanged(name):
    document = MAIN[name]
    spec = BundleSpec.from_json(document)
    assert spec.to_json() == document
    assert BundleSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("name", "fixture"),
    [("pixelcnn", "pixelcnn_bundle"), ("conditional_vae", "conditional_vae_bundle")],
)
def test_a_bundle_with_earlier_metadata_scores(name, fixture, request, tmp_path, digits_test):
    graph = Bundle.read(request.getfixturevalue(fixture)).model_bytes
    path = tmp_path / "old.onnx"
    document = json.loads(json.dumps(MAIN[name]))
    # This graph has no background model: the old likelihood ratio cannot be computed from it.
    document["scores"].pop("likelihood_ratio", None)
    path.write_bytes(with_metadata_props(graph, {METADATA_KEY: json.dumps(document)}))
    detector = Detector.load(path, device="cpu")
    labels = None if detector.classes is None else [detector.classes[0]] * 4
    assert detector.default_score == MAIN[name]["default_score"] != "combined"
    result = detector.score(digits_test.images[:4], labels=labels)
    assert np.all((result.p_values > 0) & (result.p_values <= 1))
    if name == "pixelcnn":
        assert result.probability is not None  # the map the labelled calibration stored


def test_training_writes_the_fields_it_wrote_before(vae_bundle):
    spec = Bundle.read(vae_bundle).spec
    combined = (
        "kind", "statistics", "rule", "reference", "description", "units", "direction",
        "member_references",
    )  # fmt: skip
    new = {
        *(f"scores.combined.member_references.{m}" for m in spec.scores["combined"].statistics),
        *(f"scores.{name}" for name in ("combined", *NEW_VAE_SCORES)),
        *(f"scores.{name}.{key}" for name in NEW_VAE_SCORES for key in SCORE_KEYS),
        *(f"scores.combined.{key}" for key in combined),
        # the local model (PixelCNN only: null here), the objective's name, validation time
        *("training.local", "training.objective", "training.validation_seconds"),
    }
    # The background model of the likelihood ratio is gone (issue 10: fragile, removed).
    gone = {"training.background", "training.train_config.perturb_rate"}
    assert _keys(spec.to_json()) == (_keys(MAIN["vae"]) - gone) | new


def test_unknown_fields_are_kept_and_written_back(vae_bundle, tmp_path):
    bundle = Bundle.read(vae_bundle)
    document = bundle.spec.to_json()
    document["sparsity"] = {"kind": "2:4", "parity": 1e-3}  # a record a later version adds
    document["model"]["pruned"] = True
    document["scores"][bundle.spec.default_score]["combination"] = {"rule": "fisher"}
    spec = BundleSpec.from_json(document)
    assert spec.extra == {"sparsity": {"kind": "2:4", "parity": 1e-3}}
    assert spec.model.extra == {"pruned": True}
    recalibrated = replace(spec, calibration=replace(spec.calibration, alpha=0.2))
    written = write_bundle(bundle.model_bytes, recalibrated, tmp_path / "later.onnx")
    again = Bundle.read(written.path).spec.to_json()
    assert again["sparsity"] == document["sparsity"]
    assert again["model"]["pruned"] is True
    assert again["scores"][bundle.spec.default_score]["combination"] == {"rule": "fisher"}
    assert again["calibration"]["alpha"] == 0.2


def test_a_new_score_kind_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(score_kinds, "SCORE_KINDS", dict(score_kinds.SCORE_KINDS))

    @score_kind("vote")
    @dataclass(frozen=True, kw_only=True)
    class VoteScore(ScoreSpec):
        statistics: dict  # per-statistic references, plain JSON
        rule: str = "fisher"

        def __post_init__(self):
            super().__post_init__()
            if self.rule not in ("fisher", "density"):
                raise BundleError(f"rule {self.rule!r} is not fisher or density")  # noqa: EM102

        def inputs(self) -> tuple[str, ...]:
            return ()

    document = json.loads(json.dumps(MAIN["vae"]))
    document["scores"]["vote"] = {
        "kind": "vote",
        "statistics": {"iwae": [1.0, 2.0], "recon_mse": [0.1, 0.2]},
        "reference": [0.5, 0.7],
    }
    spec = BundleSpec.from_json(document)
    combined = spec.scores["vote"]
    assert isinstance(combined, VoteScore)
    assert combined.rule == "fisher"
    assert spec.to_json()["scores"]["vote"]["statistics"] == {
        "iwae": [1.0, 2.0],
        "recon_mse": [0.1, 0.2],
    }
    document["scores"]["vote"]["rule"] = "vote"
    with pytest.raises(BundleError, match="score 'vote': rule 'vote'"):
        BundleSpec.from_json(document)
    # Until the runtime learns it, computing it is a clear error, not a wrong number.
    with pytest.raises(BundleError, match="cannot compute scores of kind 'vote'"):
        scores_from_outputs(spec.scores, ["vote"], {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["input"].update(height="8"), "input: height must be a whole number > 0"),
        (lambda m: m["input"].update(channels=1.0), "color mode L needs 1 channel"),
        (lambda m: m["scores"]["iwae"].update(reference=["a"]), "score 'iwae'.reference"),
        (lambda m: m["scores"]["iwae"].update(reference=5), "reference must be a list"),
        (lambda m: m.update(scores=[]), "scores must be a JSON object"),
        (lambda m: m.update(model="vae"), "model must be a JSON object"),
        (lambda m: m["noise"].pop("seed"), "noise lacks 'seed'"),
        (lambda m: m["heatmap"].update(mean=[0.0]), "heatmap mean must hold"),
        (lambda m: m["labels"].update(classes=[9]), "classes must be a non-empty list"),
    ],
)
def test_malformed_fields_are_a_bundle_error_saying_where(change, message):
    document = json.loads(json.dumps(MAIN["conditional_vae"]))
    change(document)
    with pytest.raises(BundleError, match=message):
        BundleSpec.from_json(document)


def test_specs_are_frozen():
    spec = BundleSpec.from_json(MAIN["vae"])
    with pytest.raises(FrozenInstanceError):
        spec.default_score = "iwae"
    with pytest.raises(FrozenInstanceError):
        spec.calibration.alpha = 0.5
    assert isinstance(spec.scores["iwae"].reference, tuple)


def test_the_unknown_score_check_has_one_home():
    spec = BundleSpec.from_json(MAIN["vae"])
    assert spec.score_name(None) == spec.default_score
    assert spec.likelihood_score == "iwae"
    with pytest.raises(ValueError, match="unknown score 'nope'; this bundle offers"):
        spec.score_name("nope")


PRECISION = {
    "weights": "int8",
    "activations": "uint8",
    "method": "onnxruntime static QDQ",
    "quantized_nodes": 12,
    "fp32_nodes": ["node_conv2d_12"],
    "parity": {
        "data": "digits:test",
        "n_images": 100,
        "score": "nll",
        "mean_abs_delta_bits_per_dim": 0.004,
        "max_abs_delta_bits_per_dim": 0.009,
        "budget_mean_abs_delta_bits_per_dim": 0.01,
    },
}


@pytest.mark.parametrize("name", sorted(MAIN))
def test_a_bundle_without_a_precision_record_is_fp32(name):
    spec = BundleSpec.from_json(MAIN[name])
    assert spec.precision is None
    assert "precision" not in spec.to_json()


def test_the_precision_record_reads_and_writes_back_unchanged():
    document = {**MAIN["vae"], "precision": PRECISION}
    spec = BundleSpec.from_json(document)
    assert spec.precision.fp32_nodes == ("node_conv2d_12",)
    assert spec.precision.parity.mean_abs_delta_bits_per_dim == 0.004
    assert spec.precision.parity.auroc_change is None  # no anomalies were given
    written = spec.to_json()
    assert BundleSpec.from_json(written) == spec
    assert written["precision"]["parity"]["auroc_change"] is None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"weights": "int4"}, "weights must be 'int8'"),
        ({"parity": {"data": "x"}}, "precision.parity lacks"),
        ({"fp32_nodes": "node"}, "fp32_nodes must be a list"),
    ],
)
def test_a_malformed_precision_record_is_refused(change, where):
    with pytest.raises(BundleError, match=where):
        BundleSpec.from_json({**MAIN["vae"], "precision": {**PRECISION, **change}})
