#!/usr/bin/env bash
# Make .venv-bentoml (at the repository root) for the BentoML peer in benchmarks/serving.py.
# BentoML stays out of the project's own environment and constraints: it pulls ~45 packages.
# On a GPU machine: ORT_GPU=1.31.1 benchmarks/bentoml/setup.sh  (swaps in onnxruntime-gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
test -x .venv-bentoml/bin/python || "$PYTHON" -m venv .venv-bentoml
.venv-bentoml/bin/python -m pip install -q --upgrade pip
.venv-bentoml/bin/python -m pip install -q -r benchmarks/bentoml/requirements.txt
if [ -n "${ORT_GPU:-}" ]; then
    .venv-bentoml/bin/python -m pip uninstall -q -y onnxruntime
    .venv-bentoml/bin/python -m pip install -q "onnxruntime-gpu==${ORT_GPU}"
fi
.venv-bentoml/bin/python -c "import bentoml, onnxruntime as ort; print('bentoml', bentoml.__version__, 'onnxruntime', ort.__version__, ort.get_available_providers())"
