#!/usr/bin/env bash
# Create .venv and install turbovid with the right torch for this machine.
#   ./build.sh            install (idempotent; reuses .venv)
#   ./build.sh --test     also install the test dependencies
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extras="triton,server"
[[ "${1:-}" == "--test" ]] && extras="triton,server,test"

if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        # A GPU machine: the default PyPI torch wheel carries CUDA.
        .venv/bin/python -m pip install -q torch
    else
        # No GPU: pin the release CI is tested with (where a CPU wheel of it is on the
        # pip find-links path it is taken, saving a multi-GB CUDA download).
        .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch
    fi
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
echo "turbovid installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
