"""`normalcy score` run in-process, as the job tests call it."""

from __future__ import annotations

from jobs.results import read_results
from normalcy.cli import main


def score(bundle, inputs, out, *extra: str) -> list[dict]:
    """Run `normalcy score BUNDLE INPUTS... --out OUT --no-progress EXTRA...`; the RESULTS rows."""
    argv = ["score", str(bundle), *map(str, inputs), "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return read_results(out)
