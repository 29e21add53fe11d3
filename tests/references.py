"""What a calibration stores, computed independently for the tests that check it: every score
computed from the graph keeps all the images' scores; a combined score of several members keeps
its statistic on the second half of them, against its members' references inside the combination
from the first half (detectors/combination.py), or on all of them, against the members' scores of
another set of images (`member_scores`); a combined score of one member keeps its statistic on all
of them, against its member's reference of all of them."""

import numpy as np

from detectors.combination import calibration_halves, combine
from detectors.score_kinds import CombinedScore


def expected_reference(
    spec, scores: dict[str, np.ndarray], name: str, member_scores: dict | None = None
) -> np.ndarray:
    """The sorted reference of score `name` after calibrating `spec` on images whose raw graph
    scores are `scores` (and, when given, on other images' `member_scores`)."""
    n = len(next(iter(scores.values())))
    score = spec.scores[name]
    if not isinstance(score, CombinedScore):
        return np.sort(np.asarray(scores[name]))
    if len(score.statistics) == 1:
        references = {m: np.sort(np.asarray(scores[m])) for m in score.statistics}
        members = {m: np.asarray(scores[m]) for m in score.statistics}
    elif member_scores is not None:
        references = {m: np.sort(np.asarray(member_scores[m])) for m in score.statistics}
        members = {m: np.asarray(scores[m]) for m in score.statistics}
    else:
        first, second = calibration_halves(n)
        references = {m: np.sort(np.asarray(scores[m])[first]) for m in score.statistics}
        members = {m: np.asarray(scores[m])[second] for m in score.statistics}
    return np.sort(combine(score.rule, members, references))
