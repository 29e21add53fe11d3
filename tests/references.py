"""What a calibration stores, computed independently for the tests that check it: with a combined
score of several members, every other score keeps the scores of the first half of the images and
the combined score the combined statistic of the second half (detectors/combination.py); without
one, every score keeps all of them, and a combined score of one member its statistic on all of
them, against its member's reference of all of them."""

import numpy as np

from detectors.combination import calibration_halves, combine
from detectors.score_kinds import CombinedScore


def expected_reference(spec, scores: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The sorted reference of score `name` after calibrating `spec` on images whose raw graph
    scores are `scores`."""
    n = len(next(iter(scores.values())))
    combined = [s for s in spec.scores.values() if isinstance(s, CombinedScore)]
    if any(len(s.statistics) > 1 for s in combined):
        first, second = calibration_halves(n)
    else:
        first = second = np.arange(n)
    score = spec.scores[name]
    if not isinstance(score, CombinedScore):
        return np.sort(np.asarray(scores[name])[first])
    references = {m: np.sort(np.asarray(scores[m])[first]) for m in score.statistics}
    members = {m: np.asarray(scores[m])[second] for m in score.statistics}
    return np.sort(combine(score.rule, members, references))
