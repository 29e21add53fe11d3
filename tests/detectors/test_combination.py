"""The combined score on arrays, without training: Fisher's rule, where the members' references
inside the combination come from (another split, or the first calibration half; nothing split for
a single member), and the false-positive rate that the combined reference guarantees."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from detectors import BundleError
from detectors.calibration import conformal_p_values, conformal_threshold
from detectors.combination import calibration_halves, combine, fisher
from detectors.errors import InputError
from detectors.fitting import combined_scores, reference_warnings, with_reference
from detectors.score_kinds import CombinedScore, OutputScore
from detectors.spec import BundleSpec, Calibration, ImageInput, ModelInfo, Preprocessing

MEMBERS = ("a", "b", "c")


def _spec(members=MEMBERS, alpha=0.01) -> BundleSpec:
    scores = {name: OutputScore(output=f"{name}_out") for name in ("a", "b", "c")}
    scores["combined"] = CombinedScore(statistics=tuple(members))
    return BundleSpec(
        model=ModelInfo(kind="vae"),
        input=ImageInput(name="images", channels=1, height=2, width=2, color_mode="L"),
        preprocessing=Preprocessing(resize="bilinear", color="convert"),
        scores=scores,
        default_score="combined",
        calibration=Calibration(alpha=alpha),
    )


def _normal_scores(rng, n: int) -> dict[str, np.ndarray]:
    """Three dependent statistics of normal images (a shared factor), one heavy-tailed."""
    shared = rng.standard_normal(n)
    return {
        "a": shared + 0.5 * rng.standard_normal(n),
        "b": np.exp(0.7 * shared + 0.7 * rng.standard_normal(n)),
        "c": rng.standard_t(3, n),
    }


def test_fisher_is_minus_twice_the_sum_of_log_p_values():
    references = {"a": np.arange(10.0), "b": np.arange(100.0)}
    raw = {"a": np.array([9.5, 0.0]), "b": np.array([50.0, 200.0])}
    p_a, p_b = (
        conformal_p_values(raw["a"], references["a"]),
        conformal_p_values(raw["b"], references["b"]),
    )
    np.testing.assert_allclose(combine("fisher", raw, references), -2 * (np.log(p_a) + np.log(p_b)))
    assert fisher([np.array([1.0])]) == 0.0  # the most normal image scores 0
    # More extreme in one member and no less in the others: higher.
    assert combine("fisher", {"a": np.array([9.5]), "b": np.array([99.5])}, references) > combine(
        "fisher", {"a": np.array([9.5]), "b": np.array([50.0])}, references
    )


def test_combine_refuses_an_unknown_rule_and_uncalibrated_members():
    with pytest.raises(InputError, match="rule"):
        combine("mean", {"a": np.zeros(1)}, {"a": np.zeros(3)})
    with pytest.raises(InputError, match="no reference"):
        combine("fisher", {"a": np.zeros(1)}, {"a": np.zeros(0)})


def test_the_halves_split_every_image_once_the_same_way_each_time():
    first, second = calibration_halves(11)
    assert (len(first), len(second)) == (6, 5)
    assert sorted(np.r_[first, second].tolist()) == list(range(11))
    np.testing.assert_array_equal(calibration_halves(11)[0], first)


def test_one_set_of_images_splits_only_inside_the_combination():
    # Without other images for the members, the members' references inside the combination come
    # from the first half and the combined reference from the second; every score computed from
    # the graph keeps all 400 images as its own reference.
    rng = np.random.default_rng(1)
    scores = _normal_scores(rng, 400)
    spec = with_reference(_spec(), scores)
    first, second = calibration_halves(400)
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(spec.scores[name].reference, np.sort(scores[name]))
    references = {name: np.sort(scores[name][first]) for name in MEMBERS}
    for name in MEMBERS:
        np.testing.assert_array_equal(
            spec.scores["combined"].member_references[name], references[name]
        )
    statistic = combine("fisher", {name: scores[name][second] for name in MEMBERS}, references)
    np.testing.assert_allclose(spec.scores["combined"].reference, np.sort(statistic))
    assert spec.calibration.n_reference == 400
    # New images: the combined raw score uses the references inside the combination.
    fresh = _normal_scores(rng, 5)
    np.testing.assert_allclose(
        combined_scores(spec, fresh)["combined"], combine("fisher", fresh, references)
    )


def test_member_scores_of_other_images_give_the_combined_score_every_image():
    # With the members' scores on another held-out split (the validation split, when training),
    # the combined reference is the statistic of all 400 calibration images.
    rng = np.random.default_rng(11)
    scores, others = _normal_scores(rng, 400), _normal_scores(rng, 250)
    spec = with_reference(_spec(), scores, member_scores=others)
    references = {name: np.sort(others[name]) for name in MEMBERS}
    for name in MEMBERS:
        np.testing.assert_array_equal(spec.scores[name].reference, np.sort(scores[name]))
        np.testing.assert_array_equal(
            spec.scores["combined"].member_references[name], references[name]
        )
    np.testing.assert_allclose(
        spec.scores["combined"].reference, np.sort(combine("fisher", scores, references))
    )
    assert len(spec.scores["combined"].reference) == 400
    fresh = _normal_scores(rng, 5)
    np.testing.assert_allclose(
        combined_scores(spec, fresh)["combined"], combine("fisher", fresh, references)
    )
    # The references travel in the bundle's JSON.
    assert BundleSpec.from_json(spec.to_json()) == spec
    with pytest.raises(InputError, match="different lengths"):
        with_reference(_spec(), scores, member_scores={**others, "a": others["a"][:-1]})


def test_a_combined_score_from_before_member_references_uses_the_members_own():
    # Bundles written before member_references: the members' own references serve.
    rng = np.random.default_rng(12)
    spec = with_reference(_spec(), _normal_scores(rng, 300))
    document = spec.to_json()
    del document["scores"]["combined"]["member_references"]
    old = BundleSpec.from_json(document)
    assert old.scores["combined"].member_references == {}
    fresh = _normal_scores(rng, 7)
    own = {name: np.asarray(old.scores[name].reference) for name in MEMBERS}
    np.testing.assert_allclose(
        combined_scores(old, fresh)["combined"], combine("fisher", fresh, own)
    )


def test_member_references_must_be_sorted_and_name_exactly_the_members():
    document = with_reference(_spec(), _normal_scores(np.random.default_rng(13), 20)).to_json()
    combined = document["scores"]["combined"]
    for bad, match in [
        ({**combined["member_references"], "z": [0.0]}, "exactly the members"),
        ({k: v[::-1] for k, v in combined["member_references"].items()}, "not sorted"),
        ({**combined["member_references"], "a": []}, "empty"),
        ([1.0, 2.0], "must be an object"),
    ]:
        broken = {**document, "scores": {**document["scores"], "combined": {**combined}}}
        broken["scores"]["combined"]["member_references"] = bad
        with pytest.raises(BundleError, match=match):
            BundleSpec.from_json(broken)


def test_a_bundle_without_a_combined_score_uses_every_image_for_every_reference():
    spec = _spec()
    spec = BundleSpec.from_json(
        {
            **spec.to_json(),
            "default_score": "a",
            "scores": {k: v for k, v in spec.to_json()["scores"].items() if k != "combined"},
        }
    )
    scores = _normal_scores(np.random.default_rng(2), 50)
    fitted = with_reference(spec, scores)
    np.testing.assert_array_equal(fitted.scores["a"].reference, np.sort(scores["a"]))


def test_a_combined_score_of_one_member_uses_every_image_and_gives_the_members_p_value():
    # With one member nothing is split: the combined p-value of a new image equals the member's
    # conformal p-value against all n images (not half of them), ties included.
    rng = np.random.default_rng(3)
    scores = _normal_scores(rng, 301)
    scores["a"][:40] = np.round(scores["a"][:40])  # ties in the reference
    spec = with_reference(_spec(members=("a",)), scores)
    everything = np.sort(scores["a"])
    np.testing.assert_array_equal(spec.scores["a"].reference, everything)
    assert len(spec.scores["combined"].reference) == 301
    fresh = _normal_scores(rng, 200)
    fresh["a"][:20] = everything[rng.integers(0, 301, 20)]  # new images tied with the reference
    combined = combined_scores(spec, fresh)["combined"]
    np.testing.assert_array_equal(
        conformal_p_values(combined, np.asarray(spec.scores["combined"].reference)),
        conformal_p_values(fresh["a"], everything),
    )


def test_one_member_flags_at_alpha_where_half_the_images_could_not():
    # 150 images: a half (75) cannot reach p <= 0.01, all of them (150 >= 99) can.
    rng = np.random.default_rng(4)
    scores = _normal_scores(rng, 150)
    one = with_reference(_spec(members=("a",), alpha=0.01), scores)
    three = with_reference(_spec(alpha=0.01), scores)
    assert math.isfinite(conformal_threshold(np.asarray(one.scores["combined"].reference), 0.01))
    assert math.isinf(conformal_threshold(np.asarray(three.scores["combined"].reference), 0.01))
    assert reference_warnings(one) == []
    [warning] = reference_warnings(three)
    assert "at least 198" in warning


@pytest.mark.parametrize(
    ("members", "other_images"), [(MEMBERS, False), (MEMBERS, True), (("b",), False)]
)
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_the_false_positive_rate_holds_at_alpha(alpha, members, other_images):
    """Many calibrations on simulated normal scores, each tested on fresh normal images: the
    measured rate of p <= alpha is inside the binomial 95% interval around its exact conformal
    value floor(alpha (m + 1)) / (m + 1), m the combined reference's size (the second half, or
    every image for one member or with the members' references on other images), which is at
    most alpha."""
    rng = np.random.default_rng(int(alpha * 1e4) + other_images)
    n_calibration, trials, per_trial = 2 * math.ceil(1 / alpha), 400, 25
    flagged = 0
    for _ in range(trials):
        member_scores = _normal_scores(rng, n_calibration // 4) if other_images else None
        spec = with_reference(
            _spec(members, alpha=alpha),
            _normal_scores(rng, n_calibration),
            member_scores=member_scores,
        )
        reference = np.asarray(spec.scores["combined"].reference)
        raw = combined_scores(spec, _normal_scores(rng, per_trial))["combined"]
        flagged += int(np.sum(conformal_p_values(raw, reference) <= alpha))
    halves = len(members) > 1 and not other_images
    m = n_calibration // 2 if halves else n_calibration  # the combined reference
    exact = math.floor(alpha * (m + 1) + 1e-9) / (m + 1)
    assert exact <= alpha
    interval = binomtest(flagged, trials * per_trial, exact).proportion_ci(0.95)
    assert interval.low <= exact <= interval.high, (flagged, trials * per_trial, exact)


def test_a_combined_score_names_scores_of_the_bundle():
    with pytest.raises(BundleError, match="combines 'nope'"):
        _spec(members=("a", "nope"))
    with pytest.raises(BundleError, match="combines 'combined'"):
        BundleSpec.from_json(
            {
                **_spec().to_json(),
                "scores": {
                    **_spec().to_json()["scores"],
                    "twice": {"kind": "combined", "statistics": ["combined"]},
                },
            }
        )
    document = _spec().to_json()
    document["scores"]["combined"]["rule"] = "median"
    with pytest.raises(BundleError, match="rule"):
        BundleSpec.from_json(document)
    assert BundleSpec.from_json(_spec().to_json()) == _spec()
