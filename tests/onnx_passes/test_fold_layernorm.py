"""fold_layernorm: a LayerNormalization's gamma/beta folded into the linear that reads it (opt-in)."""

import numpy as np
import onnx


def _ln_matmul(b, *, gamma=None, beta=None, bias=True, axis=-1, n_out=1):
    gamma = b.const(1 + b.rand(8)) if gamma is None else gamma
    beta = b.const(b.rand(8)) if beta is None else beta
    y = b.op("LayerNormalization", ["x", gamma, beta], axis=axis, n_out=n_out)
    b.rename_output(b.matmul(y, 8, 6, bias=bias), "y")
    return y


def test_layernorm_affine_into_matmul(make_builder, optimized):
    b = make_builder(7)
    _ln_matmul(b)
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert res.applied["fold_layernorm_affine"] == 1
    ln = next(n for n in res.model.graph.node if n.op_type == "LayerNormalization")
    assert len(ln.input) == 2
    gamma = next(t for t in res.model.graph.initializer if t.name == ln.input[1])
    assert np.all(onnx.numpy_helper.to_array(gamma) == 1)


def test_layernorm_affine_into_gemm_through_reshape(make_builder, optimized, op_counts):
    """The onnx-simplifier form: LN -> Reshape(-1, D) -> Gemm; the fold removes the bias Add."""
    b = make_builder(20)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(8)), b.const(b.rand(8))], axis=-1)
    b.inits.append(onnx.numpy_helper.from_array(np.array([6, 8], np.int64), "flat"))
    y = b.op("Reshape", [y, "flat"])
    b.rename_output(b.op("Gemm", [y, b.const(b.rand(8, 6)), b.const(b.rand(6))]), "y")
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert res.applied["fold_layernorm_affine"] == 1
    assert op_counts(res.model) == {"LayerNormalization": 1, "Reshape": 1, "Gemm": 1}


def test_layernorm_beta_into_biasless_matmul_refused(make_builder, unchanged, assert_refused):
    """LN applies beta inside its kernel; folding it would add a new Add node after the MatMul."""
    b = make_builder(17)
    _ln_matmul(b, bias=False)
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert_refused(res, "fold_layernorm_affine", "no bias Add")


def test_layernorm_gamma_only_into_biasless_matmul(make_builder, optimized, op_counts):
    """With beta = 0 there is nothing that needs a bias: gamma folds into W."""
    b = make_builder(18)
    gamma = b.const(1 + b.rand(8))
    _ln_matmul(b, gamma=gamma, beta=b.const(np.zeros(8, np.float32)), bias=False)
    res = optimized(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert res.applied["fold_layernorm_affine"] == 1
    assert op_counts(res.model) == {"LayerNormalization": 1, "MatMul": 1}


def test_layernorm_not_last_axis_refused(make_builder, unchanged):
    b = make_builder(8)
    y = b.op("LayerNormalization", ["x", b.const(1 + b.rand(3, 8)), b.const(b.rand(3, 8))], axis=1)
    b.rename_output(b.matmul(y, 8, 6), "y")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}), fold_layernorm_affine=True)
    assert any("not the last axis" in r or "(K,) vector" in r for r in res.refusals), res.refusals


def test_layernorm_beta_not_constant_refused(make_builder, unchanged, assert_refused):
    b = make_builder(24)
    _ln_matmul(b, beta="beta")
    res = unchanged(b.model({"x": (2, 3, 8), "beta": (8,)}, {"y": None}), fold_layernorm_affine=True)
    assert_refused(res, "fold_layernorm_affine", "beta is not a constant")


def test_layernorm_mean_output_used_refused(make_builder, unchanged, assert_refused):
    b = make_builder(25)
    y = _ln_matmul(b, n_out=2)
    b.rename_output(y.replace("_out0", "_out1"), "mean")
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None, "mean": None}), fold_layernorm_affine=True)
    assert_refused(res, "fold_layernorm_affine", "Mean/InvStdDev outputs are used")


def test_layernorm_fold_is_off_by_default(make_builder, unchanged):
    b = make_builder(19)
    _ln_matmul(b)
    res = unchanged(b.model({"x": (2, 3, 8)}, {"y": None}))
    assert "fold_layernorm_affine" not in res.applied
