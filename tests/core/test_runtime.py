"""OpenMP waiting: passive when other processes keep the CPUs busy, never over a user's choice."""

import os
import subprocess
import sys
import time

import pytest

from updp.core.runtime import OTHERS_BUSY_CPUS, choose_openmp_waiting, command_of, other_processes_cpus

PROBE = """
import os, sys
from updp import cli
try:
    cli.main([sys.argv[1], "--help"])
except SystemExit:
    pass
print(os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""

BUSY_LOOP = "import time\nend = time.time() + 30\nwhile time.time() < end:\n    pass\n"


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(kw)
    return env


@pytest.mark.parametrize("others, expected, env_after", [(0.0, "default", {}), (OTHERS_BUSY_CPUS - 0.01, "default", {}),
                                                         (OTHERS_BUSY_CPUS, "passive", {"OMP_WAIT_POLICY": "PASSIVE"}),
                                                         (None, "default", {})])
def test_passive_only_when_the_others_use_enough_cpu(others, expected, env_after, monkeypatch):
    # torch is loaded in the test process: pretend it is not, as in a fresh command line
    monkeypatch.delitem(sys.modules, "torch")
    environ: dict[str, str] = {}
    assert choose_openmp_waiting(environ, probe=lambda: others) == expected
    assert environ == env_after


@pytest.mark.parametrize("user", [{"GOMP_SPINCOUNT": "7"}, {"OMP_WAIT_POLICY": "ACTIVE"}])
def test_a_users_choice_is_kept_and_not_probed(user, monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")
    environ = dict(user)
    assert choose_openmp_waiting(environ, probe=lambda: pytest.fail("probed")) is None
    assert environ == user


def test_nothing_is_changed_once_torch_is_loaded():
    import torch  # noqa: F401  (libgomp has read its settings)

    environ: dict[str, str] = {}
    assert choose_openmp_waiting(environ, probe=lambda: 2.0) is None and environ == {}


def test_command_of_skips_options():
    assert command_of(["-v", "train", "m"]) == "train" and command_of(["--help"]) is None and command_of([]) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_probe_sees_a_busy_neighbour():
    quiet = other_processes_cpus(0.3)
    assert quiet is not None and 0.0 <= quiet <= (os.cpu_count() or 1)
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # started and spinning
        busy = other_processes_cpus(0.3)
    finally:
        hog.kill()
        hog.wait()
    assert busy is not None and busy >= 0.7  # one full core, less the look's tick granularity


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("command", ["train", "bench"])
def test_the_command_line_waits_passively_beside_a_busy_neighbour(command):
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        out = subprocess.run([sys.executable, "-c", PROBE, command], env=_env(), capture_output=True, text=True,
                             check=True).stdout.split()[-3:]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    # train computes with torch: passive; bench runs ONNX Runtime only: left alone, and not probed
    assert out == (["PASSIVE", "None", "False"] if command == "train" else ["None", "None", "False"])


def test_a_users_choice_reaches_the_command_line_unchanged():
    out = subprocess.run([sys.executable, "-c", PROBE, "train"], env=_env(GOMP_SPINCOUNT="7"), capture_output=True,
                         text=True, check=True).stdout.split()[-3:]
    assert out == ["None", "7", "False"]
