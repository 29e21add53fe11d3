"""The kinds of raw score a bundle can offer, one ScoreSpec class each (higher = more anomalous).

    output       OutputScore       a graph output as it is
    complexity   ComplexityScore   a graph output minus a lossless compressor's code length
    difference   DifferenceScore   a graph output minus another (the likelihood ratio)
    combined     CombinedScore     the other scores' p-values combined (combination.py)

Every score carries its calibration reference (the sorted scores of held-out normal images) and,
after a calibration with labelled anomalies, a map to P(anomaly). A new kind is a subclass with
its own fields and checks, registered with `@score_kind("name")`; its parameters travel as plain
JSON fields, `inputs()` names the graph outputs it reads, and `runtime.scores_from_outputs`
learns to compute it. A bundle naming a kind this version does not know is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .combination import RULES
from .records import Record, as_tuple, numbers, require
from .supervised import ProbabilityMap

HIGHER_IS_ANOMALOUS = "higher_is_anomalous"
COMPRESSORS = ("zlib", "png")


SCORE_KINDS: dict[str, type[ScoreSpec]] = {}


def score_kind(name: str):
    """Register a ScoreSpec subclass as the class of scores whose JSON `kind` is `name`."""

    def register(cls: type[ScoreSpec]) -> type[ScoreSpec]:
        cls.kind = name
        SCORE_KINDS[name] = cls
        return cls

    return register


def _check_reference(reference) -> None:
    require(isinstance(reference, tuple), "reference must be a list")
    array = np.asarray(reference, dtype=np.float64)
    require(bool(np.all(np.isfinite(array))), "reference has non-finite values")
    require(bool(np.all(np.diff(array) >= 0)), "reference is not sorted")


@dataclass(frozen=True, kw_only=True)
class ScoreSpec(Record):
    """One raw score a bundle offers (higher = more anomalous) and its calibration."""

    kind: ClassVar[str]
    PARSE: ClassVar = {"reference": numbers, "probability": ProbabilityMap.from_json}

    description: str | None = None
    units: str | None = None
    direction: str = HIGHER_IS_ANOMALOUS
    reference: tuple[float, ...] = ()  # sorted scores of held-out normal images; () uncalibrated
    probability: ProbabilityMap | None = None  # raw score -> P(anomaly), from labelled anomalies

    def __post_init__(self):
        require(self.direction == HIGHER_IS_ANOMALOUS, f"direction must be '{HIGHER_IS_ANOMALOUS}'")
        _check_reference(self.reference)

    def inputs(self) -> tuple[str, ...]:
        """The graph outputs this score is computed from."""
        raise NotImplementedError

    @classmethod
    def parse(cls, data, name: str) -> ScoreSpec:
        """The score of the kind `data` names; BundleError for a kind this version does not know."""
        what = f"score {name!r}"
        require(isinstance(data, dict), f"{what} must be a JSON object")
        kind = data.get("kind")
        require(
            kind in SCORE_KINDS, f"{what} has unknown kind {kind!r}; known: {tuple(SCORE_KINDS)}"
        )
        return SCORE_KINDS[kind].from_json({k: v for k, v in data.items() if k != "kind"}, what)

    def to_json(self) -> dict:
        return {"kind": self.kind, **super().to_json()}


@score_kind("output")
@dataclass(frozen=True, kw_only=True)
class OutputScore(ScoreSpec):
    """A graph output as it is (bits/dim, or another per-image statistic)."""

    output: str

    def __post_init__(self):
        super().__post_init__()
        require(isinstance(self.output, str), "names no output")

    def inputs(self) -> tuple[str, ...]:
        return (self.output,)


@score_kind("complexity")
@dataclass(frozen=True, kw_only=True)
class ComplexityScore(OutputScore):
    """A graph output minus the image's code length under a lossless compressor, in bits/dim."""

    compressor: str

    def __post_init__(self):
        super().__post_init__()
        require(self.compressor in COMPRESSORS, f"compressor must be one of {COMPRESSORS}")


@score_kind("difference")
@dataclass(frozen=True, kw_only=True)
class DifferenceScore(OutputScore):
    """A graph output minus another (the likelihood ratio against a background model)."""

    minus_output: str

    def __post_init__(self):
        super().__post_init__()
        require(isinstance(self.minus_output, str), "a difference needs 'minus_output'")

    def inputs(self) -> tuple[str, ...]:
        return (self.output, self.minus_output)


@score_kind("combined")
@dataclass(frozen=True, kw_only=True)
class CombinedScore(ScoreSpec):
    """The bundle's other scores (`statistics`), each as a conformal p-value against a reference,
    combined by `rule` (combination.py). Its own reference is the combined statistic on normal
    images that none of those references holds, so its p-value is exact too.

    `member_references` holds each member's reference *inside the combination*: the member's
    scores on a separate held-out normal split (the validation split, when training), so that the
    combined score's own reference can hold every calibration image. Empty in bundles written
    before it existed: the members' own references serve instead (fitting.with_reference)."""

    PARSE: ClassVar = {
        **ScoreSpec.PARSE,
        "statistics": as_tuple,
        "member_references": lambda value: (
            {k: numbers(v) for k, v in value.items()} if isinstance(value, dict) else value
        ),
    }

    statistics: tuple[str, ...]
    rule: str = "fisher"
    member_references: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self):
        super().__post_init__()
        require(self.rule in RULES, f"combination rule must be one of {RULES}")
        require(
            isinstance(self.statistics, tuple)
            and bool(self.statistics)
            and all(isinstance(name, str) for name in self.statistics),
            "a combined score names its member scores in 'statistics'",
        )
        require(isinstance(self.member_references, Mapping), "member_references must be an object")
        if self.member_references:
            require(
                set(self.member_references) == set(self.statistics),
                f"member_references must hold exactly the members {list(self.statistics)}, "
                f"got {sorted(self.member_references)}",
            )
            for reference in self.member_references.values():
                _check_reference(reference)
                require(bool(reference), "a member reference is empty")

    def inputs(self) -> tuple[str, ...]:
        return ()  # its members' outputs are theirs

    def references(self, specs: Mapping[str, ScoreSpec]) -> dict[str, np.ndarray]:
        """Each member's sorted reference for the combination: its own in `member_references`,
        else (a bundle from before them) the member score's reference in `specs`."""
        source = self.member_references or {m: specs[m].reference for m in self.statistics}
        return {m: np.asarray(source[m], dtype=np.float64) for m in self.statistics}
