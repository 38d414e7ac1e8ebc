#!/usr/bin/env bash
# The one test command: builds .venv with the test extras, then runs the CPU test suite.
# Extra arguments go to pytest (e.g. ./test.sh -k sla). GPU tests: pytest -m gpu (on a GPU machine).
set -euo pipefail
cd "$(dirname "$0")"
./build.sh --test
exec .venv/bin/python -m pytest -q "$@"
