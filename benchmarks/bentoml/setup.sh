#!/usr/bin/env bash
# Make .venv-bentoml (at the repository root) for the BentoML peer in benchmarks/serving.py.
# BentoML stays out of the project's own environment and constraints: it pulls ~45 packages.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
test -x .venv-bentoml/bin/python || "$PYTHON" -m venv .venv-bentoml
.venv-bentoml/bin/python -m pip install -q --upgrade pip
.venv-bentoml/bin/python -m pip install -q -r benchmarks/bentoml/requirements.txt
.venv-bentoml/bin/python -c "import bentoml, onnxruntime; print('bentoml', bentoml.__version__, 'onnxruntime', onnxruntime.__version__)"
