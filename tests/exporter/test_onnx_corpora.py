"""`updp optimize` on ONNX files nobody here wrote: onnx's own backend test corpora.

The node cases are regenerated from the installed onnx (`collect_testcases()`: the wheel does not
ship `data/node`); the model cases (`light`, `pytorch-converted`, `pytorch-operator`, `simple`)
come with the wheel. Every case goes through `optimize_file` with its own test inputs where it
has them. The contract: no internal error (exit 1), no wrong output (exit 4, or an optimized model
that misses the expected outputs where the original meets them), and no refusal for an old opset
alone. A refusal must be one of the honest ones: a file that fails onnx's full check (exit 2), or
a model no runtime here can run on its inputs, or a conversion onnx's converter gets wrong (exit 3).

A fixed sample (every 8th node case, and every model case but the three heaviest zoo graphs) runs
in the default suite; `-m corpus` runs everything.
"""

from __future__ import annotations

import functools
import glob
import os
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from updp.core.errors import UpdpError
from updp.exporter.optimize import optimize_file
from updp.verify import compare_outputs

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
MODEL_CORPORA = ("light", "pytorch-converted", "pytorch-operator", "simple")
SAMPLE_EVERY = 8
# Zoo graphs whose fully connected layers fold into hundreds of MB of weights: seconds each.
HEAVY = ("light_vgg19.onnx", "light_zfnet512.onnx", "light_bvlc_alexnet.onnx")
# The honest refusals (see the module docstring), by the start of their message.
ALLOWED = {2: ("fails onnx's full check",),
           3: ("cannot run the original model", "changes the model's inputs or outputs",
               "changes the model's outputs")}


def _fed_inputs(model: onnx.ModelProto) -> list[str]:
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


@functools.cache
def node_cases() -> dict[str, tuple[onnx.ModelProto, list]]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators warn about their own overflows
        cases = collect_testcases()
    return {c.name: (c.model, [(dict(zip(_fed_inputs(c.model), ins)), list(outs)) for ins, outs in c.data_sets or []])
            for c in cases if c.kind == "node"}


def _tensor(path: str) -> np.ndarray:
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return numpy_helper.to_array(t)


def _numbered(folder: str, kind: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, f"{kind}_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1][:-3]))


def model_case(corpus: str, name: str) -> tuple[onnx.ModelProto, list]:
    path = os.path.join(DATA, corpus, name)
    if name.endswith(".onnx"):
        return onnx.load(path), []
    model = onnx.load(os.path.join(path, "model.onnx"))
    sets = [(dict(zip(_fed_inputs(model), [_tensor(p) for p in _numbered(d, "input")])),
             [_tensor(p) for p in _numbered(d, "output")])
            for d in sorted(glob.glob(os.path.join(path, "test_data_set_*")))]
    return model, sets


def _model_case_names() -> list[tuple[str, str]]:
    out = []
    for corpus in MODEL_CORPORA:
        for p in sorted(glob.glob(os.path.join(DATA, corpus, "*"))):
            if p.endswith(".onnx") or os.path.isfile(os.path.join(p, "model.onnx")):
                out.append((corpus, os.path.basename(p)))
    return out


def _node_names(sample: bool) -> list[str]:
    from onnx.backend.test.case.node import collect_testcases  # noqa: F401  (fails early if missing)

    names = sorted(node_cases())
    return names[::SAMPLE_EVERY] if sample else [n for k, n in enumerate(names) if k % SAMPLE_EVERY]


def _through_optimize(tmp_path, model: onnx.ModelProto, sets: list) -> None:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    feeds = [f for f, _ in sets] or None
    try:
        optimize_file(src, out, verify=True, polish=True, fold_layernorm_affine=False, feeds=feeds)
    except UpdpError as exc:
        message = str(exc)
        assert "too old" not in message, message  # an old opset is converted, never refused as such
        assert any(a in message for a in ALLOWED.get(exc.exit_code, ())), f"exit {exc.exit_code}: {message}"
        assert not out.exists()
        return
    _meets_expected_where_the_original_does(src, out, sets)


def _draws_random(path) -> bool:
    from updp.verify import RANDOM_OPS

    return any(n.op_type in RANDOM_OPS for n in onnx.load(str(path)).graph.node)


def _meets_expected_where_the_original_does(src, out, sets: list) -> None:
    from updp.ort import make_session

    if not sets:
        return
    try:
        original = make_session(str(src), opt_level="disable", threads=1)
    except UpdpError:
        return  # ORT cannot run the original: the reference evaluator checked it above
    optimized = make_session(str(out), opt_level="disable", threads=1)
    names = [o.name for o in original.get_outputs()]
    for feeds, expected in sets:
        feeds = {k: v for k, v in feeds.items() if v is not None}
        try:
            before = original.run(None, feeds)
        except Exception:  # ORT cannot run these inputs; the reference evaluator did
            continue
        after = optimized.run(None, feeds)
        k = len(expected)
        if expected and not _draws_random(out) and compare_outputs(expected, before[:k], names[:k]).passed:
            assert compare_outputs(expected, after[:k], names[:k]).passed, "misses the expected outputs"


@pytest.mark.parametrize("name", _node_names(sample=True))
def test_node_case_sample(tmp_path, name):
    _through_optimize(tmp_path, *node_cases()[name])


@pytest.mark.corpus
@pytest.mark.parametrize("name", _node_names(sample=False))
def test_node_case(tmp_path, name):
    _through_optimize(tmp_path, *node_cases()[name])


MODEL_CASES = [pytest.param(c, n, id=f"{c}/{n}", marks=[pytest.mark.corpus] if n in HEAVY else [])
               for c, n in _model_case_names()]


@pytest.mark.parametrize("corpus, name", MODEL_CASES)
def test_model_case(tmp_path, corpus, name):
    _through_optimize(tmp_path, *model_case(corpus, name))


def test_the_bundled_zoo_graphs_are_upgraded_not_refused(tmp_path):
    """The 9 model-zoo graphs in the wheel are opset 9: all of them convert and verify."""
    light = sorted(glob.glob(os.path.join(DATA, "light", "*.onnx")))
    assert len(light) == 9
    for path in [p for p in light if "squeezenet" in p or "shufflenet" in p]:  # all: test_model_case
        res = optimize_file(path, tmp_path / "o.onnx", verify=True, polish=True, fold_layernorm_affine=False)
        assert res.conversion and res.conversion.startswith("opset 9 -> ")
