"""The scores a bundle offers and its default: the likelihood, its corrections and the model's
other statistics, each a ScoreSpec (detectors/score_kinds.py), and the combined score made of the
ones that were strong everywhere."""

from __future__ import annotations

from detectors.score_kinds import (
    CombinedScore,
    ComplexityScore,
    DifferenceScore,
    OutputScore,
    ScoreSpec,
)
from detectors.spec import LIKELIHOOD_SCORES

# The members of each kind's combined score (the default of every bundle that offers it) and
# why. They were chosen on development protocols whose anomalies are other classes' *training*
# images (one-class MNIST 2, 5, 8, 9 and Fashion-MNIST 6; Fashion-MNIST vs MNIST training
# images; the VAE's encoder_distance on the units its reason names), never on the test images
# that benchmarks/quality.py reports, by the highest worst case across those protocols (the
# VAE's since 2026-12-07: by the smallest largest shortfall of a protocol's mean from the best
# set's, the demo's digits among the protocols; benchmarks/member_sets.py). A member that is
# weak somewhere dilutes Fisher's sum, so only statistics that were strong on every development
# protocol were kept. Other candidates measured on such splits and left out:
# benchmarks/results/candidate_statistics.md and candidate_statistics_encoder.md.
COMBINED_MEMBERS = {
    "pixelcnn": (
        ("nll_map_distance",),
        "the pattern of surprise over the image, full and local model side by side: development "
        "AUROC 93.7 (MNIST 2), 92.8 (MNIST 8), 99.88 (Fashion-MNIST vs MNIST); adding "
        "local_ratio (92.4 / 91.3 / 99.87) or nll_minus_zlib (one-class -3) lowered the worst "
        "case, so the combination holds this one statistic, calibrated on every held-out "
        "image (one member needs no second half).",
    ),
    "vae": (
        (
            "latent_nll",
            "recon_map_distance",
            "iwae_minus_png",
            "encoder_neighbour_distance",
            "encoder_outlier_factor",
            "encoder_coarse_distance",
            "encoder_mixture_nll",
        ),
        "latent density, the pattern of the reconstruction error, the complexity-corrected bound "
        "and four views of the encoder's features (their distance to the nearest training "
        "images', that distance against the neighbours' own as a local outlier factor, a "
        "Gaussian and a mixture), each strong where another fails. On 2026-12-07 "
        "encoder_neighbour_distance joined encoder_outlier_factor, chosen by the smallest "
        "largest shortfall from the best set on any development protocol, the demo's digits "
        "now among them (benchmarks/results/member_sets.md; mean development AUROC without and "
        "with it): MNIST 2, 3, 4, 5, 8, 9 98.27 / 98.34; Fashion-MNIST 0, 2, 4, 6 91.34 / "
        "91.24; the pair 99.94 / 99.92; the demo's calibration digits 97.27 / 97.92; largest "
        "shortfall 0.65 / 0.10. Before, encoder_outlier_factor had taken "
        "encoder_neighbour_distance's place (candidate_statistics_outlier.md), as that had "
        "taken encoder_distance's "
        "(candidate_statistics_neighbours.md), and encoder_coarse_distance and "
        "encoder_mixture_nll recon_mse's (candidate_statistics_mixture.md). The KL term and the "
        "posterior spread ranked anomalies below normal images and stay out.",
    ),
}
# The default of a bundle without the combined score (one exported without the fitted
# densities): the single score with the highest worst case in earlier benchmarks.
FALLBACK_SCORES = {
    "pixelcnn": (
        "nll_minus_zlib",
        "input-complexity correction (zlib): on Fashion-MNIST vs MNIST AUROC 0.994 "
        "(benchmarks/results/quality_pair_150s.md, H200, 150 s per model) against 0.066 for raw "
        "NLL; one-class means are poor for every single PixelCNN score, so the pair decides.",
    ),
    "vae": (
        "iwae_minus_png",
        "the highest worst case across protocols in benchmarks/results/quality.md (H200): AUROC "
        "0.993 on Fashion-MNIST vs MNIST, one-class means 0.928 (MNIST) and 0.916 "
        "(Fashion-MNIST).",
    ),
}


def default_score(kind: str, scores: dict) -> tuple[str, str]:
    """The default score for a bundle offering `scores`, and the reason: the combined score when
    offered, else the kind's best single score."""
    if "combined" in scores:
        return "combined", "Fisher's combination of " + COMBINED_MEMBERS[kind][1]
    return FALLBACK_SCORES[kind]


# How each kind's likelihood score (detectors.spec.LIKELIHOOD_SCORES) is described: in full, and
# in short for its corrections.
LIKELIHOODS = {
    "pixelcnn": ("negative log-likelihood (exact)", "NLL"),
    "vae": ("importance-weighted bound with K samples", "IWAE bound"),
}
COMPRESSOR_NAMES = {"zlib": "zlib-9", "png": "PNG"}


def score_specs(kind: str, statistics: bool = False) -> tuple[dict[str, ScoreSpec], str]:
    """The scores a bundle offers (uncalibrated) and the default one: the likelihood in bits/dim
    and its input-complexity corrections, plus (VAE) the negative ELBO, the reconstruction error,
    the KL term and the posterior spread; with `statistics` (the graph holds the fitted densities
    and the local model), the scores in STATISTICS and the combined score, the default."""
    bits = "bits/dim"
    name = LIKELIHOOD_SCORES[kind]
    output = f"{name}_bits_per_dim"
    description, short = LIKELIHOODS[kind]
    scores: dict[str, ScoreSpec] = {}
    if kind == "vae":
        neg_elbo = "negative ELBO (K-sample average)"
        scores["neg_elbo"] = OutputScore(
            output="neg_elbo_bits_per_dim", description=neg_elbo, units=bits
        )
    scores[name] = OutputScore(output=output, description=description, units=bits)
    for compressor, title in COMPRESSOR_NAMES.items():
        scores[f"{name}_minus_{compressor}"] = ComplexityScore(
            output=output,
            compressor=compressor,
            description=f"{short} minus {title} code length (input-complexity correction)",
            units=bits,
        )
    if kind == "vae":
        scores["recon_mse"] = OutputScore(
            output="recon_mse",
            description="reconstruction error at the posterior mean",
            units="mean squared error, intensities in [0, 1]",
        )
        scores["kl"] = OutputScore(
            output="kl_bits_per_dim", description="KL term of the bound", units=bits
        )
        scores["posterior_spread"] = OutputScore(
            output="posterior_log_std",
            description="the posterior's mean log standard deviation",
            units="nats",
        )
    if statistics:
        scores.update(STATISTICS[kind])
        members = COMBINED_MEMBERS[kind][0]
        scores["combined"] = CombinedScore(
            statistics=members,
            description=f"Fisher's combination of the p-values of {', '.join(members)}",
            units="-2 sum log p",
        )
    return scores, default_score(kind, scores)[0]


# The scores the fitted densities and the local model add (score_specs with `statistics`).
_DISTANCE = "squared Mahalanobis distance"
STATISTICS = {
    "pixelcnn": {
        "local_ratio": DifferenceScore(
            output="nll_bits_per_dim",
            minus_output="local_nll_bits_per_dim",
            description="NLL minus the NLL of a PixelCNN that sees 3x3 (what the full model "
            "knows beyond local texture)",
            units="bits/dim",
        ),
        "nll_map_distance": OutputScore(
            output="nll_map_distance",
            description="how unusual the pattern of the full and local NLL maps is over 7x7 "
            "regions, under a Gaussian fitted on normal training images",
            units=_DISTANCE,
        ),
    },
    "vae": {
        "latent_nll": OutputScore(
            output="latent_nll_nats",
            description="the posterior mean's negative log-density under a Gaussian mixture "
            "fitted to the normal training images' codes",
            units="nats",
        ),
        "recon_map_distance": OutputScore(
            output="recon_map_distance",
            description="how unusual the pattern of the reconstruction map is over 7x7 "
            "regions, under a Gaussian fitted on normal training images",
            units=_DISTANCE,
        ),
        "encoder_distance": OutputScore(
            output="encoder_distance",
            description="how unusual the encoder's last feature maps are, each channel pooled "
            "into 3x3 regions, under a Gaussian fitted on normal training images",
            units=_DISTANCE,
        ),
        "encoder_coarse_distance": OutputScore(
            output="encoder_coarse_distance",
            description="how unusual the encoder's last feature maps are, each channel pooled "
            "into 2x2 regions, under a Gaussian fitted on normal training images",
            units=_DISTANCE,
        ),
        "encoder_mixture_nll": OutputScore(
            output="encoder_mixture_nll_nats",
            description="the negative log-density of the encoder's features (3x3 regions, their "
            "first 32 principal components) under a Gaussian mixture fitted on normal training "
            "images",
            units="nats",
        ),
        "encoder_neighbour_distance": OutputScore(
            output="encoder_neighbour_distance",
            description="how far the encoder's last feature maps (full resolution, scaled to "
            "unit length) lie from their 5 nearest among normal training images'",
            units="mean squared distance of unit vectors (2 - 2 cos)",
        ),
        "encoder_outlier_factor": OutputScore(
            output="encoder_outlier_factor",
            description="the local outlier factor of the encoder's last feature maps (full "
            "resolution, unit length) among normal training images': their distance to the 5 "
            "nearest against those images' distances to their own; about 1 inside the normal "
            "data",
            units="ratio of reachability distances",
        ),
    },
}
