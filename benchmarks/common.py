"""Helpers shared by the benchmarks: where the data sets are, and how results are written."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

DEFAULT_DATASETS = Path(
    os.environ.get("NORMALCY_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets")
)


def dataset_spec(datasets: Path, name: str, split: str) -> str:
    """idx spec of `name` (mnist | fashion-mnist), split train | t10k; exits if absent."""
    path = Path(datasets) / name / f"{split}-images-idx3-ubyte.gz"
    if not path.exists():
        sys.exit(
            f"skipped: {path} not found (pass --datasets DIR holding mnist/ and fashion-mnist/)"
        )
    return f"idx:{path}"


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(out: Path, name: str, results: dict, table: str) -> None:
    """Write `<name>.json` and `<name>.md` into `out` and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
