"""Each identity in float64 against a direct computation (tolerance ~1e-10)."""

import numpy as np
import pytest

from updp import identities as I

TOL = 1e-10
rng = np.random.default_rng(0)


def r(*shape):
    return rng.standard_normal(shape)


def naive_conv(x, W, b, stride, pads, groups):
    """Loop-over-outputs conv, independent of conv2d_ref's tap loop."""
    c, h, w = x.shape
    o, cg, kh, kw = W.shape
    pt, pl, pb, pr = pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    ho = (h + pt + pb - kh) // stride + 1
    wo = (w + pl + pr - kw) // stride + 1
    og = o // groups
    y = np.zeros((o, ho, wo))
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = xp[g * cg : (g + 1) * cg, i * stride : i * stride + kh, j * stride : j * stride + kw]
                y[oc, i, j] = np.sum(patch * W[oc]) + (b[oc] if b is not None else 0)
    return y


@pytest.mark.parametrize(
    "groups,stride,pads", [(1, 1, (1, 1, 1, 1)), (2, 2, (0, 1, 2, 1)), (4, 1, (3, 3, 3, 3))]
)
def test_conv2d_ref_matches_naive(groups, stride, pads):
    x, W, b = r(4, 7, 6), r(8, 4 // groups, 3, 3), r(8)
    ref = naive_conv(x, W, b, stride, pads, groups)
    np.testing.assert_allclose(I.conv2d_ref(x, W, b, stride, pads, groups), ref, atol=TOL)


def test_bn_to_affine():
    g, be, m, v = r(5), r(5), r(5), rng.uniform(0.5, 2, 5)
    s, t = I.bn_to_affine(g, be, m, v, 1e-5)
    x = r(3, 5)
    np.testing.assert_allclose(x * s + t, g * (x - m) / np.sqrt(v + 1e-5) + be, atol=TOL)


@pytest.mark.parametrize("groups", [1, 3])
def test_fold_affine_after_conv(groups):
    x, W, b, s, t = r(6, 5, 5), r(6, 6 // groups, 3, 3), r(6), r(6), r(6)
    W2, b2 = I.fold_affine_after_conv(W, b, s, t)
    ref = I.conv2d_ref(x, W, b, 1, 1, groups) * s[:, None, None] + t[:, None, None]
    np.testing.assert_allclose(I.conv2d_ref(x, W2, b2, 1, 1, groups), ref, atol=TOL)


@pytest.mark.parametrize(
    "groups,stride,pads",
    [(1, 1, (0, 0, 0, 0)), (1, 2, (1, 1, 1, 1)), (4, 1, (3, 3, 3, 3)), (2, 2, (1, 0, 2, 1))],
)
def test_fold_affine_before_conv_exact(groups, stride, pads):
    k = 7 if pads[0] == 3 else 3
    x, W, b, s, t = r(4, 5, 6), r(8, 4 // groups, k, k), r(8), r(4), r(4)
    W2, b2, corr = I.fold_affine_before_conv_exact(W, b, s, t, groups, stride, pads, (5, 6))
    ref = I.conv2d_ref(x * s[:, None, None] + t[:, None, None], W, b, stride, pads, groups)
    got = I.conv2d_ref(x, W2, b2, stride, pads, groups) + (corr if corr is not None else 0)
    np.testing.assert_allclose(got, ref, atol=TOL)
    assert (corr is None) == (not any(pads))


def test_fold_affine_before_conv_interior_equals_unpadded():
    x, W, b, s, t = r(4, 6, 6), r(5, 4, 3, 3), r(5), r(4), r(4)
    W2, b2 = I.fold_affine_before_conv(W, b, s, t)
    ref = I.conv2d_ref(x * s[:, None, None] + t[:, None, None], W, b)
    np.testing.assert_allclose(I.conv2d_ref(x, W2, b2), ref, atol=TOL)


def test_matmul_folds():
    x, W, b = r(3, 4, 6), r(6, 5), r(5)
    s5, t5, s6, t6 = r(5), r(5), r(6), r(6)
    W2, b2 = I.fold_affine_after_matmul(W, b, s5, t5)
    np.testing.assert_allclose(x @ W2 + b2, (x @ W + b) * s5 + t5, atol=TOL)
    W3, b3 = I.fold_affine_before_matmul(W, b, s6, t6)
    np.testing.assert_allclose(x @ W3 + b3, (x * s6 + t6) @ W + b, atol=TOL)
    W4, b4 = I.fold_layernorm_affine_into_matmul(s6, t6, W, b)
    ln0 = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln0 @ W4 + b4, (ln0 * s6 + t6) @ W + b, atol=TOL)


def test_compose_matmul_and_identity():
    x, W1, b1, W2, b2 = r(4, 6), r(6, 9), r(9), r(9, 6), r(6)
    W, b = I.compose_matmul(W1, b1, W2, b2)
    np.testing.assert_allclose(x @ W + b, (x @ W1 + b1) @ W2 + b2, atol=TOL)
    np.testing.assert_allclose(x @ I.add_identity_to_matmul(W) + b, x + x @ W + b, atol=TOL)


def test_dense_kernel():
    x, W = r(6, 5, 5), r(6, 2, 3, 3)
    np.testing.assert_allclose(
        I.conv2d_ref(x, I.dense_kernel(W, 3), None, 1, 1, 1), I.conv2d_ref(x, W, None, 1, 1, 3), atol=TOL
    )


@pytest.mark.parametrize(
    "s1,s2,k1,k2,p1", [(1, 1, 3, 3, 1), (2, 1, 3, 3, 1), (1, 2, 1, 3, 0), (2, 2, 3, 1, 1), (2, 1, 3, 5, 0)]
)
def test_compose_conv_kernels_unpadded_second(s1, s2, k1, k2, p1):
    x, W1, W2 = r(3, 15, 14), r(4, 3, k1, k1), r(5, 4, k2, k2)
    pads1 = (p1, p1, p1, p1)
    K = I.compose_conv_kernels(W1, s1, W2)
    assert K.shape[2] == k1 + (k2 - 1) * s1
    ref = I.conv2d_ref(I.conv2d_ref(x, W1, None, s1, pads1), W2, None, s2, 0)
    np.testing.assert_allclose(I.conv2d_ref(x, K, None, s1 * s2, pads1), ref, atol=TOL)


@pytest.mark.parametrize("s2", [1, 2])
def test_compose_pointwise_then_padded(s2):
    x, W1, W2 = r(3, 7, 6), r(4, 3, 1, 1), r(5, 4, 3, 3)
    K = I.compose_conv_kernels(W1, 1, W2)
    ref = I.conv2d_ref(I.conv2d_ref(x, W1), W2, None, s2, 1)
    np.testing.assert_allclose(I.conv2d_ref(x, K, None, s2, 1), ref, atol=TOL)


def test_compose_1x1_after():
    x, W1, W2 = r(3, 6, 6), r(4, 3, 3, 3), r(5, 4, 1, 1)
    K = I.compose_1x1_after(W1, W2)
    np.testing.assert_allclose(
        I.conv2d_ref(x, K, None, 1, 1), I.conv2d_ref(I.conv2d_ref(x, W1, None, 1, 1), W2), atol=TOL
    )


def test_compose_depthwise():
    x, W1, W2 = r(4, 9, 8), r(4, 1, 3, 3), r(4, 1, 3, 3)
    K = I.compose_depthwise_kernels(W1, 2, W2)
    ref = I.conv2d_ref(I.conv2d_ref(x, W1, None, 2, 1, 4), W2, None, 1, 0, 4)
    np.testing.assert_allclose(I.conv2d_ref(x, K, None, 2, 1, 4), ref, atol=TOL)


@pytest.mark.parametrize("groups", [1, 4, 2])
def test_add_identity_to_kernel_centre(groups):
    x, W = r(4, 5, 6), r(4, 4 // groups, 3, 3)
    got = I.conv2d_ref(x, I.add_identity_to_kernel_centre(W, groups), None, 1, 1, groups)
    np.testing.assert_allclose(got, x + I.conv2d_ref(x, W, None, 1, 1, groups), atol=TOL)


def test_conv_bias_field_is_conv_of_field():
    W, f = r(3, 2, 3, 3), r(2, 4, 5)
    np.testing.assert_allclose(
        I.conv_bias_field(f, W, 2, (1, 1, 1, 1)), naive_conv(f, W, None, 2, (1, 1, 1, 1), 1), atol=TOL
    )


def test_errors():
    with pytest.raises(ValueError):
        I.add_identity_to_kernel_centre(r(4, 4, 2, 2))
    with pytest.raises(ValueError):
        I.add_identity_to_matmul(r(3, 4))
    with pytest.raises(ValueError):
        I.conv2d_ref(r(3, 4, 4), r(4, 2, 1, 1), groups=2)


@pytest.mark.parametrize("k,stride,pads,hw", [
    (7, 1, (3, 3, 3, 3), (1, 1)), (7, 1, (3, 3, 3, 3), (2, 2)), (7, 1, (3, 3, 3, 3), (4, 4)),
    (3, 1, (1, 1, 1, 1), (3, 5)), (3, 2, (0, 1, 2, 1), (4, 4)), (5, 1, (2, 1, 2, 3), (2, 3))])
def test_depthwise_conv_as_matrices_is_the_conv(k, stride, pads, hw):
    c = 3
    x, W = r(2, c, *hw), r(c, 1, k, k)
    M = I.depthwise_conv_as_matrices(W, stride, pads, hw)
    ref = I.conv2d_ref(x, W, None, stride, pads, groups=c)
    got = np.einsum("cmn,bcn->bcm", M, x.reshape(2, c, -1)).reshape(ref.shape)
    assert np.abs(got - ref).max() < TOL
    assert np.abs(ref[0] - naive_conv(x[0], W, None, stride, pads, c)).max() < TOL


def test_conv_tap_index_on_a_map_smaller_than_the_kernel():
    """A 7×7 same conv on a 1×1 map reads its centre tap only; on 2×2 the 3×3 around the centre."""
    assert I.conv_tap_index(7, 1, 3, (1, 1)).tolist() == [[24]]
    used = set(I.conv_tap_index(7, 1, 3, (2, 2)).ravel().tolist()) - {49}
    assert used == {ty * 7 + tx for ty in (2, 3, 4) for tx in (2, 3, 4)}
    with pytest.raises(ValueError, match="one input channel"):
        I.depthwise_conv_as_matrices(r(4, 2, 3, 3), 1, 1, (2, 2))
