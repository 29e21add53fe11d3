"""The VAE's combined-score member sets on every development protocol side by side, and the
rule that picks one: the smallest largest shortfall of a protocol's mean AUROC from the best
set's on that protocol (a set that is never far behind anywhere). Figures, not tests;
development data only, never the images benchmarks/quality.py or `make demo` report.

The protocols: one-class MNIST and Fashion-MNIST units and the pair, from the statistics that
`candidate_statistics.py --save-scores` wrote (members referenced on the first calibration half,
normal: the class's validation images, anomalies: other classes' training images), and the
demo's digits (demo_members.py: members referenced on the validation digits, normal: the
calibration digits 0-4, anomalies: the training digits 5-9). Each set is Fisher's combination of
its members' conformal p-values, as shipped.

    PYTHONPATH=. python benchmarks/candidate_statistics.py --save-scores \\
        --classes 2 3 4 5 8 9 --epochs 16 --out runs/dev-mnist
    PYTHONPATH=. python benchmarks/candidate_statistics.py --save-scores \\
        --dataset fashion-mnist --classes 0 2 4 6 --epochs 16 --out runs/dev-fashion
    PYTHONPATH=. python benchmarks/candidate_statistics.py --save-scores \\
        --dataset pair --classes 0 --epochs 8 --out runs/dev-pair
    make demo
    PYTHONPATH=. python benchmarks/member_sets.py --scores runs/dev-*/scores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.candidate_statistics import VARIANTS, fisher_auroc  # noqa: E402
from benchmarks.demo_members import demo_statistics  # noqa: E402

PARTS = ("first", "normal", "anomalous")


def saved_unit(path: Path) -> tuple[str, tuple[dict, dict, dict]]:
    """A unit's protocol (its data set) and its statistics (member references, normal,
    anomalous; name -> (N,) each) from a KIND-DATASET-CLASS.npz of candidate_statistics.py."""
    dataset = path.stem.split("-", 1)[1].rsplit("-", 1)[0]
    saved = np.load(path)
    parts: dict[str, dict] = {part: {} for part in PARTS}
    for key in saved.files:
        part, name = key.split("/", 1)
        parts[part][name] = saved[key]
    return dataset, tuple(parts[part] for part in PARTS)


def shortfalls(table: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """For each set, the largest shortfall of its mean on a protocol from the best set's mean
    there; `table` is set -> protocol -> per-unit AUROCs."""
    protocols = next(iter(table.values())).keys()
    best = {p: max(np.mean(units[p]) for units in table.values()) for p in protocols}
    return {
        label: max(best[p] - np.mean(units[p]) for p in protocols) for label, units in table.items()
    }


def main(argv=None) -> None:
    from training.scores import COMBINED_MEMBERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scores", nargs="+", required=True, help="folders of vae-*.npz")
    parser.add_argument("--demo-bundle", default="runs/demo/vae.onnx")
    args = parser.parse_args(argv)
    sets = {"shipped": COMBINED_MEMBERS["vae"][0], **VARIANTS["vae"]}
    names = sorted({m for members in sets.values() for m in members})
    paths = [p for folder in args.scores for p in sorted(Path(folder).glob("vae-*.npz"))]
    units = [saved_unit(p) for p in paths]
    inside, normal, anomaly, _ = demo_statistics(args.demo_bundle, names)
    units.append(("digits", (inside, normal, anomaly)))
    protocols = list(dict.fromkeys(dataset for dataset, _ in units))
    table = {label: {p: [] for p in protocols} for label in sets}
    for dataset, statistics in units:
        for label, members in sets.items():
            table[label][dataset].append(100 * fisher_auroc(*statistics, list(members)))
    largest = shortfalls(table)
    counts = {p: sum(dataset == p for dataset, _ in units) for p in protocols}
    print(
        "VAE member sets on the development protocols: mean AUROC x 100 (worst unit), Fisher's "
        "rule; units: " + ", ".join(f"{p} {counts[p]}" for p in protocols) + "\n"
    )
    print("| members | " + " | ".join(protocols) + " | largest shortfall |")
    print("|---|" + "---:|" * (len(protocols) + 1))
    for label, members in sets.items():
        cells = [f"{np.mean(table[label][p]):.2f} ({min(table[label][p]):.2f})" for p in protocols]
        row = f"| {label}: {', '.join(members)} | " + " | ".join(cells)
        print(f"{row} | {largest[label]:.2f} |")


if __name__ == "__main__":
    main()
