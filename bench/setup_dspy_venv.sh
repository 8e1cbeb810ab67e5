#!/usr/bin/env bash
# Create bench/.venv-dspy: a bench-only virtualenv with DSPy 3.4.1 from PyPI, the peer that
# bench/bench_core.py measures our LM layer against. Idempotent: a venv that already has the
# right DSPy is left alone. Kept apart from .venv so DSPy's dependencies (litellm, ...) never
# leak into the project's own environment.
#
#   bash bench/setup_dspy_venv.sh            # uses python3.11 (or $PYTHON)
set -euo pipefail

DSPY_VERSION="3.4.1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-dspy"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

installed_version() {
    "${VENV}/bin/python" -c 'import importlib.metadata as m; print(m.version("dspy"))' \
        2>/dev/null || true
}

if [[ -x "${VENV}/bin/python" && "$(installed_version)" == "${DSPY_VERSION}" ]]; then
    echo "bench/.venv-dspy already has dspy ${DSPY_VERSION}"
    exit 0
fi

if [[ ! -x "${VENV}/bin/python" ]]; then
    "${PYTHON}" -m venv "${VENV}"
fi
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
"${VENV}/bin/python" -m pip install --quiet "dspy==${DSPY_VERSION}"
echo "bench/.venv-dspy: dspy $(installed_version)"
