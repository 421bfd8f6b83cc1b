#!/usr/bin/env bash
# Create or refresh .venv at the repo root so that it holds updp and everything it needs.
# Re-installs only when pyproject.toml changed since the last successful install (a hash stamp),
# so a second run costs a fraction of a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP="$VENV/.updp-install-stamp"
PY="${PYTHON:-python3}"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
echo "updp: setting up $VENV (first run takes about two minutes)" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
# torch/torchvision first and pinned, so that no other requirement can pull a different build.
"$VENV/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" >&2
"$VENV/bin/python" -m pip install --quiet -e "$ROOT[data,report,dev]" >&2
echo "$want" > "$STAMP"
