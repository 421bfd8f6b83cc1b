"""The README's Python API example runs as written, with tiny budgets.

The code block after the `python-api-example` marker in README.md is executed unchanged; only the
`updp` it sees is a thin shim that passes smaller settings (digits instead of mnist5k, one epoch of
two steps, a thin 5-block ConvNeXt, a handful of latency runs). The call signatures are the real ones.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import types
from pathlib import Path

import onnx

import updp

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- python-api-example"


def readme_example() -> str:
    text = README.read_text()
    start = text.index(MARKER)
    m = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert m, "no python block after the marker"
    return m.group(1)


def test_import_updp_is_cheap():
    import subprocess

    code = "import sys, updp; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    assert set(updp.__all__) >= {"train", "search", "prune", "export", "evaluate", "bench", "run"}


def _tiny(fn, **defaults):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if "data" in kwargs:
            kwargs["data"] = "digits"
        if "epochs" in kwargs:
            kwargs["epochs"] = 1
        return fn(*args, **{**kwargs, **defaults})
    return call


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    steps = {"max_steps_per_epoch": 2, "batch_size": 32, "progress": False, "device": "cpu"}
    shim = types.SimpleNamespace(
        train=_tiny(updp.train, model_kwargs={"dims": [16, 32, 48, 64], "depths": [1, 1, 2, 1]}, **steps),
        search=_tiny(updp.search, max_evals=4, random_picks=1, calib_batches=1, bench_repeats=5, profile_rounds=2,
                     **steps),
        prune=_tiny(updp.prune, calib_batches=1, **steps),
        export=updp.export, evaluate=_tiny(updp.evaluate),
        bench=_tiny(updp.bench, repeats=5, warmup=1))
    code = readme_example().replace("import updp\n", "")
    exec(compile(code, str(README), "exec"), {"updp": shim})
    out = capsys.readouterr().out
    assert re.search(r"val acc \d\.\d{4} -> \d\.\d{4}, merge max abs diff \d\.\de[-+]\d\d", out)
    assert "ORT_ENABLE_ALL" in out or "all" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "pruned.onnx")).metadata_props}
    assert len(json.loads(meta["updp.pruned_blocks"])) == 4  # target_blocks=4 as in the README
    for name in ("base.pt", "plan.json", "pruned.pt", "base.onnx", "pruned.onnx"):
        assert (tmp_path / name).is_file()
