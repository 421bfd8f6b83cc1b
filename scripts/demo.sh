#!/usr/bin/env bash
# The README's main command: set up .venv if needed, then run updp's embedded default job.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/ensure_venv.sh"
exec "$ROOT/.venv/bin/updp" demo "$@"
