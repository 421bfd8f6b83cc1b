"""The OpenMP spin limit: set for the command line before torch loads, never over a user's choice."""

import os
import subprocess
import sys

import pytest

from updp.core.runtime import OPENMP_SPINCOUNT, limit_openmp_spinning

PROBE = """
import os, sys
from updp import cli
try:
    cli.main(["bench", "--help"])
except SystemExit:
    pass
print(os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(kw)
    return env


@pytest.mark.parametrize("user, expected", [({}, str(OPENMP_SPINCOUNT)), ({"GOMP_SPINCOUNT": "7"}, "7"),
                                            ({"OMP_WAIT_POLICY": "PASSIVE"}, "None")])
def test_the_command_line_limits_spinning_unless_the_user_chose(user, expected):
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(**user), capture_output=True, text=True,
                         check=True).stdout.split()[-2:]
    assert out == [expected, "False"]  # and the command line did not import torch to get there


def test_nothing_is_changed_once_torch_is_loaded():
    import torch  # noqa: F401  (libgomp has read its settings)

    environ: dict[str, str] = {}
    assert not limit_openmp_spinning(environ) and environ == {}
