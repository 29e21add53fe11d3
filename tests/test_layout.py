"""The repository's one import rule, read from the source with `ast` (every import, lazy ones
inside functions too): everything imports `detectors`; `detectors` imports nothing above it;
`training`, `service` and `jobs` never import each other; `service` and `jobs` never import torch;
`jobs` never imports FastAPI; only the `normalcy` package imports them all. No two modules of the
runtime packages import each other, and no product file is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detectors", "training", "service", "jobs", "normalcy")
WEB = {"fastapi", "starlette", "uvicorn"}
FORBIDDEN = {
    "detectors": {"torch", *WEB, "training", "service", "jobs", "normalcy"},
    "training": {"service", "jobs", "normalcy"},
    "service": {"torch", "training", "jobs", "normalcy"},
    "jobs": {"torch", *WEB, "training", "service", "normalcy"},
    "normalcy": set(),
}
MAX_LINES = 400


def product_files(root: Path) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file, relative ones resolved."""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[: len(package) - node.level + 1]
                base = ".".join(filter(None, [*up, node.module or ""]))
            # `from package import module` imports the module; `from module import name` the module
            for alias in node.names:
                candidate = f"{base}.{alias.name}" if base else alias.name
                is_module = (root / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    root / Path(*candidate.split(".")) / "__init__.py"
                ).exists()
                found.append((candidate if is_module else base, node.lineno))
    return found


def violations(root: Path) -> list[str]:
    """Every import that breaks the rule, and every pair of runtime modules (training aside: a
    PixelCNN's `sample` method hands over to its sampler module) that import each other."""
    problems = []
    graph: dict[str, set[str]] = {}
    for path in product_files(root):
        name = module_name(path, root)
        package = name.split(".")[0]
        graph[name] = set()
        for module, line in imports(path, root):
            top = module.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if top in FORBIDDEN[package]:
                problems.append(f"{where}: {package} imports {module}")
            if top in PACKAGES and package != "training" and module != name:
                graph[name].add(module)
    for a, targets in graph.items():
        for b in targets:
            if a < b and a in graph.get(b, ()):
                problems.append(f"{a} and {b} import each other")
    return problems


def test_the_product_keeps_the_import_rule():
    assert violations(ROOT) == []


def test_the_rule_check_finds_each_kind_of_violation(tmp_path):
    files = {
        "detectors/__init__.py": "",
        "detectors/core.py": "from ..training import fit\nimport fastapi\n",
        "training/__init__.py": "",
        "training/fit.py": "def f():\n    import jobs.score\n",
        "service/__init__.py": "",
        "service/app.py": "import torch\nfrom jobs import score\n",
        "jobs/__init__.py": "",
        "jobs/score.py": "from .ray_engine import run\nfrom starlette import status\n",
        "jobs/ray_engine.py": "from jobs.score import ScoreJob\nfrom detectors import core\n",
        "normalcy/__init__.py": "",
        "normalcy/cli.py": "import torch, training, service, jobs\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = "\n".join(violations(tmp_path))
    for expected in [
        "detectors/core.py:1: detectors imports training",
        "detectors/core.py:2: detectors imports fastapi",
        "training/fit.py:2: training imports jobs.score",
        "service/app.py:1: service imports torch",
        "service/app.py:2: service imports jobs.score",
        "jobs/score.py:2: jobs imports starlette",
        "jobs.ray_engine and jobs.score import each other",
    ]:
        assert expected in found
    assert "normalcy" not in found  # the command line may import everything
    assert "ray_engine.py:2" not in found  # everything may import detectors


@pytest.mark.parametrize("path", product_files(ROOT), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_product_file_is_over_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"
