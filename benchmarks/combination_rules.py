"""Combination rules side by side: how the combined score's members are best made into one
statistic. Figures, not tests; development data only, never the images benchmarks/quality.py
reports.

Each unit trains a model with the product's own steps (benchmarks/quality.fit_unit) on one
class's training images. The members (training/scores.COMBINED_MEMBERS) get their conformal
p-values against the first calibration half (the product's members took theirs from it until
2026-12-03, and now from the validation split, which these units hold out as their normal
images). The rules then turn them into one
statistic, and each is measured by its AUROC on the class's *validation* images (normal, held out
from training) against other classes' *training* images (anomalies):

  fisher    -2 sum log p_i (the shipped rule, detectors/combination.py)
  tippett   -log min p_i (the smallest p-value decides)
  stouffer  sum of the normal quantiles Phi^-1(1 - p_i)
  gaussian  Mahalanobis distance of the raw member statistics, a full-covariance Gaussian
            (Ledoit-Wolf) fitted on the first half (a density of the statistics, as in DoSE,
            Morningstar et al. 2021)
  mixture   -log density of a Gaussian mixture of the standardised statistics, components
            (1-4) chosen by BIC on the first half

Every rule's statistic would be conformalised on the second half in the product; that is a
monotone map, so the AUROC is the statistic's.

    PYTHONPATH=. python benchmarks/combination_rules.py                  # MNIST 2, 5, 8, 9; VAE
    PYTHONPATH=. python benchmarks/combination_rules.py --dataset fashion-mnist --classes 6
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.quality import DATASETS, PAIR_TRAIN, auroc, fit_unit, load  # noqa: E402

RULES = ("fisher", "tippett", "stouffer", "gaussian", "mixture")
DEV_ANOMALIES = 1000


def rule_statistics(first: dict, members: dict) -> dict[str, np.ndarray]:
    """Each rule's statistic (higher = more anomalous) for `members` (name -> raw scores (B,)),
    fitted on `first` (name -> raw scores of the first calibration half)."""
    from scipy.stats import norm
    from sklearn.covariance import LedoitWolf
    from sklearn.mixture import GaussianMixture

    from detectors.calibration import conformal_p_values, reference_from_scores

    names = sorted(first)
    p = np.stack(
        [conformal_p_values(members[n], reference_from_scores(first[n])) for n in names], axis=1
    )
    n_ref = len(first[names[0]])
    out = {
        "fisher": -2.0 * np.log(p).sum(axis=1),
        "tippett": -np.log(p.min(axis=1)),
        # p = 1 would give an infinite quantile: shrink onto (0, 1) by the reference's grid.
        "stouffer": norm.isf(p * (n_ref + 1) / (n_ref + 2)).sum(axis=1),
    }
    train = np.stack([first[n] for n in names], axis=1)
    test = np.stack([members[n] for n in names], axis=1)
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-12
    train, test = (train - mean) / std, (test - mean) / std
    gaussian = LedoitWolf().fit(train)
    out["gaussian"] = gaussian.mahalanobis(test)
    fits = [
        GaussianMixture(k, covariance_type="full", random_state=0).fit(train) for k in (1, 2, 3, 4)
    ]
    best = min(fits, key=lambda model: model.bic(train))
    out["mixture"] = -best.score_samples(test)
    return out


def dev_unit(dataset: str, cls: int, datasets: str, seed: int = 0) -> dict:
    """One class's training images, and other classes' training images (stratified) as the
    development anomalies; for the pair (`dataset` "pair", `cls` unused), PAIR_TRAIN Fashion-MNIST
    training images and DEV_ANOMALIES MNIST *training* images."""
    rng = np.random.default_rng(seed)
    if dataset == "pair":
        fashion, _ = load(datasets, "fashion-mnist", "train")
        mnist, _ = load(datasets, "mnist", "train")
        return {
            "train": fashion[rng.choice(len(fashion), PAIR_TRAIN, replace=False)],
            "anomalous": mnist[rng.choice(len(mnist), DEV_ANOMALIES, replace=False)],
        }
    images, labels = load(datasets, dataset, "train")
    anomalous = np.concatenate(
        [
            rng.choice(np.flatnonzero(labels == c), DEV_ANOMALIES // 9, replace=False)
            for c in range(10)
            if c != cls
        ]
    )
    return {"train": images[labels == cls], "anomalous": images[anomalous]}


def measure(kind: str, dataset: str, cls: int, epochs: int, datasets: str) -> dict:
    from detectors.combination import calibration_halves
    from training.scores import COMBINED_MEMBERS

    started = time.monotonic()
    unit = dev_unit(dataset, cls, datasets)
    # The validation images picked the best epoch (normal images only, as in the product).
    fitted = fit_unit(kind, unit["train"], epochs, source=dataset)
    raw, splits = fitted.raw, fitted.splits
    members = COMBINED_MEMBERS[kind][0]
    calibration = raw(splits.calibration.images)
    first, _ = calibration_halves(len(splits.calibration))
    first_half = {n: calibration[n][first] for n in members}
    normal, anomalous = raw(splits.validation.images), raw(unit["anomalous"])
    n_normal = len(splits.validation)
    both = {n: np.r_[normal[n], anomalous[n]] for n in members}
    statistics = rule_statistics(first_half, both)
    return report(
        {"kind": kind, "dataset": dataset, "normal_class": cls, "epochs": epochs},
        {"n_normal": n_normal, "n_anomalous": len(unit["anomalous"])},
        rules={r: auroc(s[:n_normal], s[n_normal:]) for r, s in statistics.items()},
        members={n: auroc(normal[n], anomalous[n]) for n in members},
        started=started,
    )


def report(unit: dict, sizes: dict, *, started: float, **figures) -> dict:
    """One development unit's record (its unit, its sizes, its figures and seconds), printed as a
    JSON line as it is made."""
    result = {**unit, **sizes, **figures, "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(result), flush=True)
    return result


def markdown(results: list[dict]) -> str:
    lines = [
        "Combination rules on development splits (AUROC x 100; normal: the class's validation "
        "images; anomalies: other classes' training images)",
        "",
        "| model | data | class | " + " | ".join(RULES) + " | best member |",
        "|---|---|---:|" + "---:|" * len(RULES) + "---|",
    ]
    for r in results:
        name, value = max(r["members"].items(), key=lambda item: item[1])
        lines.append(
            f"| {r['kind']} | {r['dataset']} | {r['normal_class']} | "
            + " | ".join(f"{100 * r['rules'][rule]:.1f}" for rule in RULES)
            + f" | `{name}` {100 * value:.1f} |"
        )
    for kind in sorted({r["kind"] for r in results}):
        rows = [r for r in results if r["kind"] == kind]
        means = {rule: np.mean([r["rules"][rule] for r in rows]) for rule in RULES}
        lines.append(
            f"| **{kind} mean** | | | "
            + " | ".join(f"**{100 * v:.1f}**" for v in means.values())
            + " | |"
        )
    return "\n".join(lines) + "\n"


def dev_parser(doc: str, classes: list[int], out: str) -> argparse.ArgumentParser:
    """The options of a benchmark over development units (this one, candidate_statistics.py)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(
        "--dataset",
        default="mnist",
        choices=["mnist", "fashion-mnist", "pair"],
        help="pair: Fashion-MNIST training images against MNIST training images (--classes 0)",
    )
    parser.add_argument("--classes", type=int, nargs="+", default=classes)
    parser.add_argument("--kinds", default="vae", help="vae, pixelcnn or both (comma-separated)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: VAE 8, PixelCNN 1)")
    parser.add_argument("--datasets", default=str(DATASETS))
    parser.add_argument("--out", default=out)
    return parser


def run_units(args, measure) -> list[dict]:
    """measure(kind, dataset, class, epochs, datasets) for each kind and class of `args`."""
    results = []
    for kind in args.kinds.split(","):
        epochs = args.epochs or {"vae": 8, "pixelcnn": 1}[kind]
        for cls in args.classes:
            results.append(measure(kind, args.dataset, cls, epochs, args.datasets))
    return results


def write_results(out: str, name: str, results: list[dict], markdown) -> None:
    """`name`.json and `name`.md under `out`, and the table on stdout."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=1))
    (folder / f"{name}.md").write_text(markdown(results))
    print(markdown(results))


def main(argv=None) -> None:
    args = dev_parser(__doc__, [2, 5, 8, 9], "runs/combination-rules").parse_args(argv)
    write_results(args.out, "combination_rules", run_units(args, measure), markdown)


if __name__ == "__main__":
    main()
