#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run the test suite.
# Slow end-to-end tests on full-size zoo models are opt-in: scripts/test.sh -m slow
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/ensure_venv.sh"
cd "$ROOT"
if [[ $# -eq 0 ]]; then set -- -m "not slow" -q; fi
exec "$ROOT/.venv/bin/python" -m pytest "$@"
