#!/usr/bin/env bash
# Generate a video from a prompt:  ./predict.sh --prompt "A cat playing piano" [OPTIONS]
# Options are those of `turbovid generate` (./predict.sh --help lists them). Builds .venv first if
# it is missing. Paths (--output, --checkpoint-dir) are relative to the current folder.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
    echo "predict.sh: no .venv yet, running ./build.sh" >&2
    "$ROOT/build.sh" >&2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$ROOT/.venv/bin/python" -m turbovid generate "$@"
