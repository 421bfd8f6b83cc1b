"""λ schedules: 0 at the start, monotone, exactly 1.0 from the end of the ramp, for every kind."""

from __future__ import annotations

import pytest

from updp.core.errors import InputError
from updp.training.lambda_schedule import KINDS, LambdaSchedule


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps, frac", [(100, 0.5), (7, 0.3), (10, 1.0), (2, 0.5)])
def test_schedule_shape(kind, steps, frac):
    s = LambdaSchedule(kind=kind, ramp_fraction=frac, steps=steps)
    vals = [s(i) for i in range(steps)]
    assert vals[0] == 0.0
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    r = s.ramp_steps
    assert 1 <= r <= steps - 1
    assert all(v == 1.0 for v in vals[r:])      # exactly 1.0, not 0.9999
    assert all(v < 1.0 for v in vals[:r])
    assert vals[-1] == 1.0                       # the last step always trains the mergeable form


def test_values():
    lin = LambdaSchedule("linear", 0.5, steps=100)
    assert lin.ramp_steps == 50 and lin(25) == 0.5
    cos = LambdaSchedule("cosine", 0.5, steps=100)
    assert cos(25) == pytest.approx(0.5) and cos(10) < lin(10)
    st = LambdaSchedule("step", 0.5, steps=100, levels=4)
    assert [st(i) for i in (0, 12, 13, 25, 49, 50)] == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


def test_abrupt():
    s = LambdaSchedule("linear", 0.0, steps=10)
    assert s.ramp_steps == 0 and all(s(i) == 1.0 for i in range(10)) and "abrupt" in s.describe()


@pytest.mark.parametrize("kw", [{"kind": "exp"}, {"ramp_fraction": 1.5}, {"steps": 0}])
def test_bad(kw):
    with pytest.raises(InputError):
        LambdaSchedule(**{"kind": "linear", "ramp_fraction": 0.5, "steps": 10, **kw})
