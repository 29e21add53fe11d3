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

from benchmarks.candidate_statistics import VARIANTS  # noqa: E402
from benchmarks.quality import auroc  # noqa: E402


def main(argv=None) -> None:
    from detectors import Bundle, Detector
    from detectors.calibration import conformal_p_values
    from detectors.combination import fisher
    from detectors.sources import load_digits
    from training.data import split
    from training.demo import NORMAL
    from training.scores import COMBINED_MEMBERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", default="runs/demo/vae.onnx")
    args = parser.parse_args(argv)
    bundle = Bundle.read(args.bundle)
    train = load_digits("train")
    # The demo's own split (training/demo.py: validation 0.15, calibration 0.25, seed 0).
    validation = split(train.with_classes(NORMAL), seed=0, validation=0.15, calibration=0.25)
    anomalous = train.images[~np.isin(train.labels, NORMAL)]
    sets = {"shipped": COMBINED_MEMBERS["vae"][0], **VARIANTS["vae"]}
    names = sorted({m for members in sets.values() for m in members})
    detector = Detector(bundle, device="cpu", raw_only=True)
    normal, _ = detector.raw_scores_batched(validation.calibration.images, names)
    anomaly, _ = detector.raw_scores_batched(anomalous, names)
    inside, _ = detector.raw_scores_batched(validation.validation.images, names)
    reference = {n: np.sort(inside[n]) for n in names}
    shipped = bundle.spec.scores["combined"]
    for m in shipped.statistics:  # the bundle's own references inside the combination
        np.testing.assert_allclose(reference[m], shipped.member_references[m], rtol=1e-6)

    def statistic(scores, members):
        return fisher([conformal_p_values(scores[m], reference[m]) for m in members])

    print(
        f"VAE member sets, demo development split ({len(validation.calibration)} calibration "
        f"digits 0-4 against {len(anomalous)} training digits 5-9; members referenced on "
        f"{len(validation.validation)} validation digits), AUROC:\n"
    )
    print("| members | AUROC |\n|---|---:|")
    for label, members in sets.items():
        value = auroc(statistic(normal, members), statistic(anomaly, members))
        print(f"| {label}: {', '.join(members)} | {value:.4f} |")
    for name in names:
        print(f"| {name} alone | {auroc(normal[name], anomaly[name]):.4f} |")


if __name__ == "__main__":
    main()
