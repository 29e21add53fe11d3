"""The VAE's combined-score member sets on the demo's development split: the bundle `make demo`
writes (runs/demo/vae.onnx), its held-out calibration digits 0-4 (normal) against the *training*
digits 5-9 (anomalies). Never digits:test, which the demo reports. Each member's p-value is taken
against its scores on the validation digits 0-4, the product's references inside the combination
(fitting.with_reference), and Fisher's rule combines them, as the product does; the AUROC of that
statistic is the combined score's.

    make demo && PYTHONPATH=. .venv/bin/python benchmarks/demo_members.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.candidate_statistics import VARIANTS, fisher_auroc  # noqa: E402
from benchmarks.quality import auroc  # noqa: E402


def demo_statistics(path: str, names: list[str]) -> tuple[dict, dict, dict, int]:
    """Raw scores `names` of the demo's VAE bundle at `path` on the demo's validation digits 0-4
    (the members' references), calibration digits 0-4 (normal) and training digits 5-9
    (anomalous), name -> (N,) each, and the number of validation digits; checks that the
    bundle's references inside the combination are the validation digits' scores."""
    from detectors import Bundle, Detector
    from detectors.sources import load_digits
    from training.data import split
    from training.demo import NORMAL

    bundle = Bundle.read(path)
    train = load_digits("train")
    # The demo's own split (training/demo.py: validation 0.15, calibration 0.25, seed 0).
    parts = split(train.with_classes(NORMAL), seed=0, validation=0.15, calibration=0.25)
    anomalous = train.images[~np.isin(train.labels, NORMAL)]
    detector = Detector(bundle, device="cpu", raw_only=True)
    inside, normal, anomaly = (
        detector.raw_scores_batched(images, names)[0]
        for images in (parts.validation.images, parts.calibration.images, anomalous)
    )
    shipped = bundle.spec.scores["combined"]
    for m in shipped.statistics:  # the bundle's own references inside the combination
        np.testing.assert_allclose(np.sort(inside[m]), shipped.member_references[m], rtol=1e-6)
    return inside, normal, anomaly, len(parts.validation)


def main(argv=None) -> None:
    from training.scores import COMBINED_MEMBERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="runs/demo/vae.onnx")
    args = parser.parse_args(argv)
    sets = {"shipped": COMBINED_MEMBERS["vae"][0], **VARIANTS["vae"]}
    names = sorted({m for members in sets.values() for m in members})
    inside, normal, anomaly, n_inside = demo_statistics(args.bundle, names)
    print(
        f"VAE member sets, demo development split ({len(normal[names[0]])} calibration digits "
        f"0-4 against {len(anomaly[names[0]])} training digits 5-9; members referenced on "
        f"{n_inside} validation digits), AUROC:\n"
    )
    print("| members | AUROC |\n|---|---:|")
    for label, members in sets.items():
        value = fisher_auroc(inside, normal, anomaly, list(members))
        print(f"| {label}: {', '.join(members)} | {value:.4f} |")
    for name in names:
        print(f"| {name} alone | {auroc(normal[name], anomaly[name]):.4f} |")


if __name__ == "__main__":
    main()
