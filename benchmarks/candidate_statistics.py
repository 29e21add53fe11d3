"""Candidate statistics for the combined score, side by side on development splits: what was tried
to close the one-class gap of issue 10, each alone and added to the shipped members. Figures, not
tests; development data only, never the images benchmarks/quality.py reports.

Each unit trains a model with the product's own steps (benchmarks/quality.fit_unit) on one
class's training images. Densities fit on the training images the product fits its own on
(training/densities.subset); members get conformal p-values against the first calibration half
(the product's members took theirs from it until 2026-12-03, and now from the validation split,
which these units hold out as their normal images) and are combined with Fisher's rule, as in
the product. AUROC on the class's *validation* images
(normal, held out from training) against other classes' *training* images (anomalies).

VAE candidates (the shipped members: latent_nll, recon_map_distance, iwae_minus_png,
encoder_neighbour_distance, encoder_outlier_factor, encoder_coarse_distance and
encoder_mixture_nll; the last two took recon_mse's place in 2026-12; encoder_neighbour_distance
took encoder_distance's place on 2026-12-03 (it is feature_cosine_knn_pca256 below),
encoder_outlier_factor its own later that day (feature_cosine_lof_k5), and both have been
members since 2026-12-07 (benchmarks/member_sets.py); VARIANTS are measured beside them):
  latent_knn         mean squared distance of the posterior mean to its LATENT_NEIGHBOURS nearest
                     training codes: a non-parametric density of the aggregate posterior, beside
                     latent_nll's Gaussian mixture
  residual_distance  squared Mahalanobis distance (Ledoit-Wolf) of the signed residual
                     x - E[x | mu], pooled into 14x14 regions: where strokes are missing or extra
                     (recon_map_distance sees how large the error is, not its sign)
  feature_cosine_knn mean squared distance of the encoder's full-resolution feature maps, flattened
                     and scaled to unit length, to their 5 nearest among the training images'
                     (2 - 2 cos): FIT_IMAGES of them; _1000: the first 1000; _pca256, _pca128:
                     the unit features on the bank's first 256 or 128 principal components;
                     _pca256_k1, _k2, _k10: 1, 2 or 10 neighbours; _pca256_all: every training
                     image in the bank, not FIT_IMAGES of them
  feature_cosine_lof_k5, _k20
                     scikit-learn's local outlier factor (5 or 20 neighbours) of the unit
                     features' 256 principal-component coordinates among the training images'
  pixel_lof          the same factor (20 neighbours) on the pixels in [0, 1], as the peer
                     sklearn_lof, fitted on the FIT_IMAGES training images (the peer: all)
  kl, posterior_spread, two-sided
                     p = min(1, 2 min(p_high, p_low)) against the same reference: a normal-only
                     way to use a statistic whose direction is not known in advance (both rank
                     anomalies *below* normal images on one-class MNIST)
PixelCNN candidates (the shipped member is nll_map_distance, a Gaussian of the full and local
NLL maps' pooled logs over 7x7 regions):
  regions_4, regions_14   the same Gaussian over 4x4 and 14x14 regions
  regions_full            7x7, the full model's map alone
  regions_ratio           7x7, the map of the local ratio (full minus local)
  regions_knn             mean squared distance to the 5 nearest training images in the whitened
                          7x7 features

    PYTHONPATH=. python benchmarks/candidate_statistics.py --classes 2 3 4 5 8 9 --epochs 16
    PYTHONPATH=. python benchmarks/candidate_statistics.py --dataset fashion-mnist \
        --classes 0 2 4 6 --epochs 16
    PYTHONPATH=. python benchmarks/candidate_statistics.py --dataset pair --classes 0 --epochs 8
    PYTHONPATH=. python benchmarks/candidate_statistics.py --merge runs/*/candidate_statistics.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.combination_rules import (  # noqa: E402
    dev_parser,
    dev_unit,
    report,
    run_units,
    write_results,
)
from benchmarks.quality import auroc, fit_unit  # noqa: E402

LATENT_NEIGHBOURS = 5
BATCH = 256
SCORES_DIR: Path | None = None  # --save-scores


def nearest_mean_sq(train: np.ndarray, x: np.ndarray, k: int = LATENT_NEIGHBOURS) -> np.ndarray:
    """Mean squared Euclidean distance of each row of x to its k nearest rows of train, (B,)."""
    return nearest_mean_sqs(train, x, (k,))[k]


def nearest_mean_sqs(train: np.ndarray, x: np.ndarray, ks) -> dict[int, np.ndarray]:
    """nearest_mean_sq for each k of ks, from one distance matrix, {k: (B,)}."""
    d2 = (x**2).sum(1)[:, None] + (train**2).sum(1)[None] - 2.0 * x @ train.T
    nearest = np.sort(np.maximum(d2, 0.0), axis=1)[:, : max(ks)]
    return {k: nearest[:, :k].mean(1) for k in ks}


def pooled(maps: np.ndarray, grid: int) -> np.ndarray:
    """(N, H, W) -> (N, grid * grid) region means, pooled as the product's region density pools."""
    from training.models.density import pooling_matrix

    n, h, w = maps.shape
    return maps.reshape(n, h * w) @ pooling_matrix(h, w, grid)


def gaussian_distance(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Squared Mahalanobis distances under a Ledoit-Wolf Gaussian fitted on `train`."""
    from sklearn.covariance import LedoitWolf

    fitted = LedoitWolf().fit(train)
    return [fitted.mahalanobis(x) for x in others]


def vae_features(fitted, images: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior means (N, latent), signed residuals x - E[x | mu] (N, H, W), the encoder's
    feature maps and the pixels in [0, 1] (N, features) each."""
    import torch

    model, mus, residuals, maps, pixels = fitted.model, [], [], [], []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH]))
            features = model.encoder_features(x)
            mu, _ = model.posterior(features)
            mean = model.decoder_mean(model.decode(mu))
            mus.append(mu.double().numpy())
            residuals.append((x.float() / 255.0 - mean).mean(1).double().numpy())
            maps.append(features.flatten(1).numpy())
            pixels.append(x.flatten(1).float().numpy() / 255.0)
    return {
        "mu": np.concatenate(mus),
        "residual": np.concatenate(residuals),
        "features": np.concatenate(maps),
        "pixels": np.concatenate(pixels),
    }


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_knn_views(
    train: np.ndarray, parts: list[np.ndarray], everything: np.ndarray | None = None
) -> dict[str, list[np.ndarray]]:
    """Cosine kNN of the encoder's full-resolution feature maps (flattened, each image scaled
    to unit length) against a bank of training images': the whole bank (FIT_IMAGES), a bank of
    1000, and the bank projected on its first 256 or 128 principal components (`train`, `parts`:
    (N, features) each). On 256 components also: 1, 2 and 10 neighbours (_k1, _k2, _k10), and
    every training image in the bank (`everything`, _all)."""
    bank = unit_rows(train.astype(np.float64))
    units = [unit_rows(p.astype(np.float64)) for p in parts]
    out = {
        "feature_cosine_knn": [nearest_mean_sq(bank, u) for u in units],
        "feature_cosine_knn_1000": [nearest_mean_sq(bank[:1000], u) for u in units],
    }
    mean = bank.mean(0)
    _, _, vt = np.linalg.svd(bank - mean, full_matrices=False)
    for k in (256, 128):
        basis = vt[:k].T
        ref = (bank - mean) @ basis
        projected = [(u - mean) @ basis for u in units]
        views = [nearest_mean_sqs(ref, p, (1, 2, 5, 10)) for p in projected]
        out[f"feature_cosine_knn_pca{k}"] = [v[5] for v in views]
        if k == 256:
            for n in (1, 2, 10):
                out[f"feature_cosine_knn_pca256_k{n}"] = [v[n] for v in views]
            for n in (5, 20):
                out[f"feature_cosine_lof_k{n}"] = local_outlier_factor(ref, projected, n)
    if everything is not None:
        whole = unit_rows(everything.astype(np.float64))
        mean = whole.mean(0)
        _, _, vt = np.linalg.svd(whole - mean, full_matrices=False)
        basis = vt[:256].T
        ref = (whole - mean) @ basis
        out["feature_cosine_knn_pca256_all"] = [
            nearest_mean_sq(ref, (u - mean) @ basis) for u in units
        ]
    return out


def local_outlier_factor(train: np.ndarray, parts: list[np.ndarray], k: int) -> list[np.ndarray]:
    """scikit-learn's local outlier factor (novelty mode, k neighbours) of each row of parts
    against train, (B,) each; higher = more anomalous."""
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=k, novelty=True).fit(train)
    return [-lof.score_samples(p) for p in parts]


def pixelcnn_features(fitted, images: np.ndarray) -> dict[str, np.ndarray]:
    """The full and the local model's NLL maps, log(bits + floor) as the region density takes
    them, each (N, H, W)."""
    import torch

    from training.models.density import LOG_FLOOR_BITS

    full, local = [], []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images[start : start + BATCH]))
            for out, model in ((full, fitted.model), (local, fitted.statistics.local)):
                bits = model.nll_bits_map(x)
                out.append(torch.log(bits.double() + LOG_FLOOR_BITS).mean(1).numpy())
    return {"full": np.concatenate(full), "local": np.concatenate(local)}


def candidates(
    kind: str, train: dict, parts: list[dict], everything: dict | None = None
) -> list[dict[str, np.ndarray]]:
    """Each candidate statistic (higher = more anomalous) of each of `parts` (features of
    calibration, normal and anomalous images), fitted on `train` (features of the training
    images the product fits on; `everything`: of all training images, for the VAE's _all bank)."""
    out = [{} for _ in parts]
    if kind == "vae":
        residuals = [pooled(f["residual"], 14) for f in (train, *parts)]
        distances = gaussian_distance(residuals[0], *residuals[1:])
        for o, p, d in zip(out, parts, distances, strict=True):
            o["latent_knn"] = nearest_mean_sq(train["mu"], p["mu"])
            o["residual_distance"] = d
        lofs = local_outlier_factor(train["pixels"], [p["pixels"] for p in parts], 20)
        for o, v in zip(out, lofs, strict=True):
            o["pixel_lof"] = v
        views = cosine_knn_views(
            train["features"],
            [p["features"] for p in parts],
            None if everything is None else everything["features"],
        )
        for name, values in views.items():
            for o, v in zip(out, values, strict=True):
                o[name] = v
        return out
    views = {
        "regions_4": (4, lambda f: (f["full"], f["local"])),
        "regions_14": (14, lambda f: (f["full"], f["local"])),
        "regions_full": (7, lambda f: (f["full"],)),
        "regions_ratio": (7, lambda f: (f["full"] - f["local"],)),
    }
    for name, (grid, maps) in views.items():

        def features(f, grid=grid, maps=maps):
            return np.concatenate([pooled(m, grid) for m in maps(f)], axis=1)

        distances = gaussian_distance(features(train), *[features(p) for p in parts])
        for o, d in zip(out, distances, strict=True):
            o[name] = d
    from sklearn.covariance import LedoitWolf

    def seven(f):
        return np.concatenate([pooled(f["full"], 7), pooled(f["local"], 7)], axis=1)

    features = seven(train)
    fitted = LedoitWolf().fit(features)
    whiten = np.linalg.cholesky(fitted.precision_)
    reference = (features - fitted.location_) @ whiten
    for o, p in zip(out, parts, strict=True):
        o["regions_knn"] = nearest_mean_sq(reference, (seven(p) - fitted.location_) @ whiten)
    return out


TWO_SIDED = {"vae": ("kl", "posterior_spread"), "pixelcnn": ()}
# Other member sets measured beside the shipped one: the VAE's before its two feature densities
# took recon_mse's place, and with the 2x2 Gaussian alone in its place.
VARIANTS = {
    "vae": {
        "without encoder_neighbour_distance (the members before 2026-12-07)": (
            "latent_nll",
            "recon_map_distance",
            "iwae_minus_png",
            "encoder_outlier_factor",
            "encoder_coarse_distance",
            "encoder_mixture_nll",
        ),
        "without encoder_outlier_factor (the members before it joined)": (
            "latent_nll",
            "recon_map_distance",
            "iwae_minus_png",
            "encoder_neighbour_distance",
            "encoder_coarse_distance",
            "encoder_mixture_nll",
        ),
        "encoder_distance for encoder_neighbour_distance (the members before 2026-12-03)": (
            "latent_nll",
            "recon_map_distance",
            "iwae_minus_png",
            "encoder_distance",
            "encoder_coarse_distance",
            "encoder_mixture_nll",
        ),
        "earlier members (recon_mse for the two feature densities)": (
            "latent_nll",
            "recon_map_distance",
            "recon_mse",
            "iwae_minus_png",
            "encoder_distance",
        ),
        "encoder_coarse_distance for recon_mse": (
            "latent_nll",
            "recon_map_distance",
            "iwae_minus_png",
            "encoder_distance",
            "encoder_coarse_distance",
        ),
    },
    "pixelcnn": {},
}


def fisher_auroc(first, normal, anomalous, members, two_sided=()) -> float:
    """AUROC of Fisher's combination of the members' conformal p-values against `first`."""
    from detectors.calibration import conformal_p_values, reference_from_scores
    from detectors.combination import fisher

    def p_value(scores, m):
        p = conformal_p_values(scores[m], reference_from_scores(first[m]))
        if m in two_sided:
            low = conformal_p_values(-scores[m], reference_from_scores(-first[m]))
            p = np.minimum(1.0, 2.0 * np.minimum(p, low))
        return p

    def statistic(scores):
        return fisher([p_value(scores, m) for m in members])

    return auroc(statistic(normal), statistic(anomalous))


def measure(kind: str, dataset: str, cls: int, epochs: int, datasets: str) -> dict:
    from detectors.combination import calibration_halves
    from training.densities import subset
    from training.scores import COMBINED_MEMBERS

    started = time.monotonic()
    unit = dev_unit(dataset, cls, datasets)
    fitted = fit_unit(kind, unit["train"], epochs, source=dataset)
    splits = fitted.splits
    features = vae_features if kind == "vae" else pixelcnn_features
    chosen = subset(len(splits.train))
    sets = [splits.calibration.images, splits.validation.images, unit["anomalous"]]
    if kind == "vae":  # the _all bank takes every training image
        everything = features(fitted, splits.train.images)
        train = {name: values[chosen] for name, values in everything.items()}
    else:
        everything, train = None, features(fitted, splits.train.images[chosen])
    extra = candidates(kind, train, [features(fitted, s) for s in sets], everything)
    cal, normal, anomalous = [{**fitted.raw(s), **e} for s, e in zip(sets, extra, strict=True)]
    first_idx, _ = calibration_halves(len(splits.calibration))
    first = {name: values[first_idx] for name, values in cal.items()}
    if SCORES_DIR is not None:  # every statistic of the three sets, for member sets tried later
        SCORES_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(
            SCORES_DIR / f"{kind}-{dataset}-{cls}.npz",
            **{
                f"{part}/{n}": v
                for part, d in (("first", first), ("normal", normal), ("anomalous", anomalous))
                for n, v in d.items()
            },
        )
    shipped = list(COMBINED_MEMBERS[kind][0])
    variant_members = [m for ms in VARIANTS[kind].values() for m in ms if m not in shipped]
    names = [*shipped, *dict.fromkeys(variant_members), *TWO_SIDED[kind], *extra[0]]
    alone = {n: auroc(normal[n], anomalous[n]) for n in names}
    for n in TWO_SIDED[kind]:
        alone[f"{n} (two-sided)"] = fisher_auroc(first, normal, anomalous, [n], two_sided=(n,))
    combined = {"shipped": fisher_auroc(first, normal, anomalous, shipped)}
    for label, members in VARIANTS[kind].items():
        combined[label] = fisher_auroc(first, normal, anomalous, list(members))
    for n in [*TWO_SIDED[kind], *extra[0]]:
        key = f"+ {n}" + (" (two-sided)" if n in TWO_SIDED[kind] else "")
        combined[key] = fisher_auroc(first, normal, anomalous, [*shipped, n], TWO_SIDED[kind])
    if kind == "vae":
        combined["latent_knn for latent_nll"] = fisher_auroc(
            first, normal, anomalous, ["latent_knn", *shipped[1:]]
        )
    return report(
        {"kind": kind, "dataset": dataset, "normal_class": cls, "epochs": epochs},
        {"n_normal": len(normal[shipped[0]]), "n_anomalous": len(anomalous[shipped[0]])},
        alone=alone,
        combined=combined,
        started=started,
    )


def markdown(results: list[dict]) -> str:
    lines = [
        "Candidate statistics on development splits (AUROC x 100; normal: the class's validation "
        "images; anomalies: other classes' training images; Fisher's rule over conformal "
        "p-values, as shipped)",
    ]
    groups = {(r["kind"], r["dataset"], r["epochs"]) for r in results}
    for kind, dataset, epochs in sorted(
        groups, key=lambda g: (g[0] != "vae", g[1] != "mnist", g[2])
    ):
        rows = sorted(
            (
                r
                for r in results
                if (r["kind"], r["dataset"], r["epochs"]) == (kind, dataset, epochs)
            ),
            key=lambda r: r["normal_class"],
        )
        units = [f"class {r['normal_class']}" for r in rows]
        header = "| | " + " | ".join(units) + " | mean |"
        rule = "|---|" + "---:|" * (len(units) + 1)
        for part, title in (("alone", "alone"), ("combined", "the shipped members and")):
            lines += [
                "",
                f"{kind} ({epochs} epoch{'' if epochs == 1 else 's'}), {dataset}, {title}:",
                "",
                header,
                rule,
            ]
            for name in rows[0][part]:
                values = [100 * r[part][name] for r in rows]
                cells = " | ".join(f"{v:.2f}" for v in values)
                lines.append(f"| {name} | {cells} | {np.mean(values):.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = dev_parser(__doc__, [2, 3, 8, 9], "runs/candidate-statistics")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="instead of running: join earlier runs' results"
    )
    parser.add_argument(
        "--save-scores",
        action="store_true",
        help="also write each unit's statistics (first calibration half, normal, anomalous) to "
        "OUT/scores/KIND-DATASET-CLASS.npz",
    )
    args = parser.parse_args(argv)
    if args.save_scores:
        global SCORES_DIR
        SCORES_DIR = Path(args.out) / "scores"
    if args.merge:
        results = [r for path in args.merge for r in json.loads(Path(path).read_text())]
    else:
        results = run_units(args, measure)
    write_results(args.out, "candidate_statistics", results, markdown)


if __name__ == "__main__":
    main()
