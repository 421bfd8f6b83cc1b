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
LOG="$VENV/updp-install.log"
: > "$LOG"
run() {
    # pip's build chatter goes to the log; on failure its tail is shown.
    if ! "$@" >>"$LOG" 2>&1; then
        echo "updp: setup failed running: $*" >&2
        tail -n 25 "$LOG" >&2
        echo "updp: full log in $LOG" >&2
        exit 1
    fi
}
run "$VENV/bin/python" -m pip install --upgrade pip
# torch/torchvision first and pinned, so that no other requirement can pull a different build.
run "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
run "$VENV/bin/python" -m pip install -e "$ROOT[data,report,dev]"
echo "$want" > "$STAMP"
echo "updp: $VENV is ready" >&2
