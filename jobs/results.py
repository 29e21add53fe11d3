"""A batch job's results: the journal it appends to while scoring, and the RESULTS file it writes.

The journal (`journal.jsonl` in the job's work area) holds one JSON line per scored input: input,
index, score, p_value, error. Lines are appended a batch at a time, so a job killed at any moment
leaves complete lines followed by at most one torn line, which `Journal.open` cuts off. It is the
only record of progress: resuming skips what it holds.

RESULTS (`.csv`, `.jsonl` or `.parquet`) is written from the journal when scoring ends, atomically
(a temporary file renamed into place). Decisions are taken there: `is_anomaly` is
`p_value <= alpha`, or with `--fdr Q` the Benjamini-Hochberg `q_value <= Q`, whose q-values need
every p-value of the job (those of earlier, interrupted runs included), so they are computed only at
the end.
"""

from __future__ import annotations

import csv
import json
import math
import os
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.calibration import benjamini_hochberg
from detectors.errors import InputError

from .inputs import NO_INDEX, Item

FORMATS = (".csv", ".jsonl", ".parquet")
PARQUET_ROW_GROUP = 65_536


def results_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        msg = f"{path}: results must be a {', '.join(FORMATS)} file"
        raise InputError(msg)
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            msg = "Parquet results need pyarrow: pip install 'normalcy[parquet]'"
            raise InputError(msg) from None
    return suffix


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def rows_from_batch(batch: dict[str, np.ndarray]) -> list[dict]:
    """Scored columns (see jobs.scoring.score_batch) -> journal rows; NaN and '' become null."""
    rows = []
    for path, index, score, p_value, error in zip(
        batch["input"],
        batch["index"],
        batch["score"],
        batch["p_value"],
        batch["error"],
        strict=True,
    ):
        rows.append(
            {
                "input": str(path),
                "index": None if int(index) == NO_INDEX else int(index),
                "score": _number(score),
                "p_value": _number(p_value),
                "error": str(error) or None,
            }
        )
    return rows


class Journal:
    """Append-only JSON lines of scored inputs; survives SIGKILL up to the last complete line."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def open(self) -> tuple[set[Item], int]:
        """Cut off a torn last line, open for appending; returns (items done, rows held)."""
        done: set[Item] = set()
        if self.path.exists():
            with open(self.path, "r+b") as f:
                end = 0
                for number, line in enumerate(f, 1):
                    if not line.endswith(b"\n"):
                        f.truncate(end)  # the torn line of a write that a kill interrupted
                        break
                    end += len(line)
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        msg = (
                            f"{self.path}:{number}: corrupt journal line; "
                            "delete the work area to start again"
                        )
                        raise InputError(msg) from None
                    done.add((row["input"], NO_INDEX if row["index"] is None else row["index"]))
        self._file = open(self.path, "a", encoding="utf-8")
        return done, len(done)

    def append(self, rows: list[dict]) -> None:
        # One write per batch: a kill leaves whole lines plus at most one torn line.
        self._file.write("".join(json.dumps(row) + "\n" for row in rows))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def rows(self) -> Iterator[dict]:
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)


@dataclass
class Totals:
    rows: int = 0
    scored: int = 0
    anomalies: int = 0
    errors: int = 0


def _decided(journal: Journal, alpha: float, fdr: float | None) -> Iterator[dict]:
    """Journal rows with q_value (when fdr) and is_anomaly added, in journal order."""
    q_values = None
    if fdr is not None:
        p_values = array("d", (r["p_value"] for r in journal.rows() if r["error"] is None))
        q_values = iter(benjamini_hochberg(np.frombuffer(p_values)) if p_values else ())
    for row in journal.rows():
        ok = row["error"] is None
        out = {
            "input": row["input"],
            "index": row["index"],
            "score": row["score"],
            "p_value": row["p_value"],
        }
        if q_values is not None:
            out["q_value"] = float(next(q_values)) if ok else None
            out["is_anomaly"] = out["q_value"] <= fdr if ok else None
        else:
            out["is_anomaly"] = row["p_value"] <= alpha if ok else None
        out["error"] = row["error"]
        yield out


def write_results(
    journal: Journal, out: Path, *, alpha: float, fdr: float | None, metadata: dict | None = None
) -> Totals:
    """Write RESULTS from the journal (atomically) and count what it holds."""
    fmt = results_format(out)
    columns = (
        ["input", "index", "score", "p_value"]
        + (["q_value"] if fdr is not None else [])
        + ["is_anomaly", "error"]
    )
    totals = Totals()

    def counted(rows: Iterator[dict]) -> Iterator[dict]:
        for row in rows:
            totals.rows += 1
            if row["error"] is None:
                totals.scored += 1
                totals.anomalies += bool(row["is_anomaly"])
            else:
                totals.errors += 1
            yield row

    rows = counted(_decided(journal, alpha, fdr))
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == ".csv":
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row[c] is None else row[c] for c in columns])
    elif fmt == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        _write_parquet(rows, tmp, columns, metadata or {})
    os.replace(tmp, out)
    return totals


def _write_parquet(rows: Iterator[dict], path: Path, columns: list[str], metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {
        "input": pa.string(),
        "index": pa.int64(),
        "score": pa.float64(),
        "p_value": pa.float64(),
        "q_value": pa.float64(),
        "is_anomaly": pa.bool_(),
        "error": pa.string(),
    }
    schema = pa.schema(
        [(c, types[c]) for c in columns],
        metadata={"normalcy": json.dumps(metadata, sort_keys=True)},
    )
    with pq.ParquetWriter(path, schema) as writer:
        buffer: list[dict] = []
        for row in rows:
            buffer.append(row)
            if len(buffer) == PARQUET_ROW_GROUP:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                buffer = []
        if buffer:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))


def read_results(path: str | Path) -> list[dict]:
    """Read a RESULTS file back as a list of rows (for tests and small jobs)."""
    path = Path(path)
    fmt = results_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if fmt == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    parsers = {
        "index": int,
        "score": float,
        "p_value": float,
        "q_value": float,
        "is_anomaly": lambda v: v == "True",
    }
    return [
        {k: (None if v == "" else parsers.get(k, str)(v)) for k, v in row.items()} for row in rows
    ]
