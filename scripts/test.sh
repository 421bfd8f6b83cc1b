#!/usr/bin/env bash
# The README's test command: set up .venv if needed, then run the test suite.
# Opt-in: full-size zoo models (-m slow), thousands of property-based examples (-m fuzz), the
# whole of onnx's backend corpora (-m corpus), SIGKILL-and-resume at every kill point (-m kill),
# e.g. scripts/test.sh -m "slow or fuzz or corpus or kill"
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/ensure_venv.sh"
cd "$ROOT"
# Idle OpenMP threads spin briefly: the suite starts subprocesses that share the cores with it
# (and that then skip updp's own look at the CPUs' load, updp.core.runtime).
if [[ -z "${OMP_WAIT_POLICY:-}" ]]; then export GOMP_SPINCOUNT="${GOMP_SPINCOUNT:-3000}"; fi
# By default one pytest worker per CPU (at most 4), each test file on one worker: alone, the suite
# keeps about 1.1 of 2 cores busy (it waits on subprocesses that import torch); with two workers,
# 7 min 44 s and 7 min 55 s against 11 min 19 s on a quiet 2-core machine. UPDP_TEST_WORKERS=1
# runs it in this process, as before.
if [[ $# -eq 0 ]]; then
    workers="${UPDP_TEST_WORKERS:-$(nproc)}"
    (( workers > 4 )) && workers=4
    set -- -m "not slow and not fuzz and not corpus and not kill" -q
    if (( workers > 1 )); then set -- "$@" -n "$workers" --dist loadfile; fi
fi
exec "$ROOT/.venv/bin/python" -m pytest "$@"
