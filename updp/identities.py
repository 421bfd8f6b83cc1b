"""Algebraic identities behind every fold and merge, one pure numpy function each.

Each function maps weights to weights and works in the dtype it is given (tests use float64). The
ONNX passes (`updp.onnx_passes`) and the torch side call the same functions, so one identity is
proven once. Conventions:

* Conv weights are ONNX/torch layout `W: (out, in/groups, kH, kW)`, biases `b: (out,)`.
* Conv pads are ONNX order `(top, left, bottom, right)`; strides `(sH, sW)`; dilation is 1.
* MatMul weights are `W: (K, N)` with `y = x @ W + b` acting on the last axis. A Gemm with
  `transB=1` (and torch `nn.Linear`) stores `W.T: (N, K)`, which has the conv layout (out first),
  so the `*_conv` functions serve it.
* A per-channel affine is `y = x * scale + shift` with `scale, shift: (C,)`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "add_identity_to_kernel_centre",
    "add_identity_to_matmul",
    "bn_to_affine",
    "compose_1x1_after",
    "compose_conv_kernels",
    "compose_depthwise_kernels",
    "compose_matmul",
    "conv2d_ref",
    "conv_bias_field",
    "conv_output_size",
    "conv_tap_index",
    "dense_kernel",
    "depthwise_conv_as_matrices",
    "fold_affine_after_conv",
    "fold_affine_after_matmul",
    "fold_affine_before_conv",
    "fold_affine_before_conv_exact",
    "fold_affine_before_matmul",
    "fold_layernorm_affine_into_matmul",
]


def _pair(v) -> tuple[int, int]:
    if np.isscalar(v):
        return int(v), int(v)
    v = tuple(int(a) for a in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _pads4(pads) -> tuple[int, int, int, int]:
    if pads is None:
        return 0, 0, 0, 0
    if np.isscalar(pads):
        p = int(pads)
        return p, p, p, p
    pads = tuple(int(p) for p in pads)
    if len(pads) == 2:  # symmetric (pH, pW)
        return pads[0], pads[1], pads[0], pads[1]
    return pads  # type: ignore[return-value]


def conv_output_size(size: int, k: int, stride: int, pad_begin: int, pad_end: int) -> int:
    """Spatial output size of a dilation-1 conv: floor((size + pads - k) / stride) + 1."""
    return (size + pad_begin + pad_end - k) // stride + 1


def conv2d_ref(
    x: np.ndarray, W: np.ndarray, b: np.ndarray | None = None, stride=1, pads=0, groups: int = 1
) -> np.ndarray:
    """Reference 2-D convolution (cross-correlation, ONNX semantics, zero padding, dilation 1).

    Loops over the kH*kW kernel taps and does one grouped matrix product per tap, so it is fast
    enough for whole feature maps.

    Args:
        x: (N, C, H, W) or (C, H, W).
        W: (O, C/groups, kH, kW).
        b: (O,) or None.
        stride: int or (sH, sW).
        pads: int, (pH, pW) or ONNX (top, left, bottom, right).
        groups: number of groups; C and O must be divisible by it.

    Returns:
        (N, O, Ho, Wo) (or (O, Ho, Wo) for an unbatched x).
    """
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    n, c, h, w = x.shape
    o, cg, kh, kw = W.shape
    if c != cg * groups or o % groups:
        raise ValueError(f"groups={groups} do not divide: x has {c} channels, W is {W.shape}")
    sh, sw = _pair(stride)
    pt, pl, pb, pr = _pads4(pads)
    ho, wo = conv_output_size(h, kh, sh, pt, pb), conv_output_size(w, kw, sw, pl, pr)
    dtype = np.result_type(x.dtype, W.dtype)
    xp = np.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dtype)
    xp[:, :, pt : pt + h, pl : pl + w] = x
    og = o // groups
    out = np.zeros((n, groups, og, ho, wo), dtype=dtype)
    # Wg: (groups, O/groups, C/groups, kH, kW)
    Wg = W.reshape(groups, og, cg, kh, kw)
    for u in range(kh):
        for v in range(kw):
            # patch: (N, groups, C/groups, Ho, Wo)
            patch = xp[:, :, u : u + sh * (ho - 1) + 1 : sh, v : v + sw * (wo - 1) + 1 : sw]
            patch = patch.reshape(n, groups, cg, ho, wo)
            out += np.einsum("ngchw,goc->ngohw", patch, Wg[:, :, :, u, v], optimize=True)
    out = out.reshape(n, o, ho, wo)
    if b is not None:
        out += b.reshape(1, o, 1, 1)
    return out[0] if squeeze else out


def conv_tap_index(kernel_hw, stride, pads, in_hw) -> np.ndarray:
    """Which kernel tap links each output position to each input position of one channel.

    A convolution on a fixed H×W map is a linear map from the H·W inputs to the Ho·Wo outputs of a
    channel: entry (o, i) is the tap `ty·kW + tx` that reads input i for output o, or `kH·kW`
    (read as zero) where none does (padding, or taps out of reach). On maps smaller than the kernel
    most taps only ever read padding, which is why the matrix form is cheaper there.

    Returns:
        (Ho·Wo, H·W) int64, row-major positions.
    """
    kh, kw = _pair(kernel_hw)
    sh, sw = _pair(stride)
    pt, pl, pb, pr = _pads4(pads)
    h, w = _pair(in_hw)
    ho, wo = conv_output_size(h, kh, sh, pt, pb), conv_output_size(w, kw, sw, pl, pr)
    index = np.full((ho * wo, h * w), kh * kw, dtype=np.int64)
    for oy in range(ho):
        for ty in range(kh):
            iy = oy * sh + ty - pt
            if not 0 <= iy < h:
                continue
            for ox in range(wo):
                for tx in range(kw):
                    ix = ox * sw + tx - pl
                    if 0 <= ix < w:
                        index[oy * wo + ox, iy * w + ix] = ty * kw + tx
    return index


def depthwise_conv_as_matrices(W: np.ndarray, stride, pads, in_hw) -> np.ndarray:
    """A depthwise conv on an H×W map as one matrix per channel: `y_c = M_c @ x_c` (flattened maps).

    Args:
        W: (C, 1, kH, kW), one filter per channel (groups = C).

    Returns:
        M: (C, Ho·Wo, H·W).
    """
    c, one, kh, kw = W.shape
    if one != 1:
        raise ValueError(f"a depthwise kernel has one input channel per group, W is {W.shape}")
    taps = np.concatenate([W.reshape(c, kh * kw), np.zeros((c, 1), W.dtype)], axis=1)
    return taps[:, conv_tap_index((kh, kw), stride, pads, in_hw)]


def conv_bias_field(field_in: np.ndarray, W: np.ndarray, stride=1, pads=0, groups: int = 1) -> np.ndarray:
    """What a conv (without its own bias) makes of a constant input field, zero padding included.

    A constant added before a zero-padded conv does not reach the padded border, so its effect on
    the output is position dependent: `field_out = conv(field_in, W)` with zero padding, exactly.

    Args:
        field_in: (C, H, W) constant input field (e.g. a per-channel shift broadcast to H x W).
        W: (O, C/groups, kH, kW).

    Returns:
        field_out: (O, Ho, Wo).
    """
    return conv2d_ref(field_in, W, None, stride, pads, groups)


def bn_to_affine(gamma, beta, mean, var, eps: float):
    """Inference BatchNorm as a per-channel affine.

    BN(x) = gamma * (x - mean) / sqrt(var + eps) + beta = x * scale + shift with
    scale = gamma / sqrt(var + eps), shift = beta - mean * scale. All shapes (C,).
    """
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return scale, shift


def fold_affine_after_conv(W, b, scale, shift):
    """Affine after a conv (or a transB Gemm / nn.Linear): (conv(x, W) + b) * s + t.

    W' = W * s[o], b' = b * s + t.

    Args:
        W: (O, ...) output channel first (conv (O, C/g, kH, kW) or Linear (N, K)).
        b: (O,) (zeros if the op has no bias).
        scale, shift: (O,).
    """
    # s: (O, 1, ..., 1)
    s = scale.reshape((-1,) + (1,) * (W.ndim - 1))
    return W * s, b * scale + shift


def fold_affine_after_matmul(W, b, scale, shift):
    """Affine after a MatMul: (x @ W + b) * s + t = x @ (W * s) + (b * s + t).

    Args:
        W: (K, N). b, scale, shift: (N,).
    """
    return W * scale[None, :], b * scale + shift


def fold_affine_before_matmul(W, b, scale, shift):
    """Affine before a MatMul: (x * s + t) @ W + b = x @ (diag(s) W) + (t @ W + b).

    Args:
        W: (K, N). b: (N,). scale, shift: (K,).
    """
    return scale[:, None] * W, shift @ W + b


def fold_layernorm_affine_into_matmul(gamma, beta, W, b):
    """LayerNorm affine into the next linear: LN(x; g, be) @ W + b = LN0(x) @ (diag(g) W) + (be @ W + b).

    LN0 is the LayerNorm with gamma = 1, beta = 0. Shapes: gamma, beta (K,), W (K, N), b (N,).
    """
    return fold_affine_before_matmul(W, b, gamma, beta)


def _scale_per_weight_row(scale, W, groups):
    """Per-input-channel vector laid out like W[:, :, 0, 0]: (O, C/groups)."""
    o, cg = W.shape[:2]
    og = o // groups
    # scale: (C,) -> (groups, C/groups) -> row o uses group o // og
    return np.repeat(scale.reshape(groups, cg), og, axis=0)


def fold_affine_before_conv(W, b, scale, shift, groups: int = 1):
    """Affine before a conv, interior form: conv(x * s + t, W) + b.

    W'[o, j] = W[o, j] * s[c(o, j)], b'[o] = b[o] + sum_{j,u,v} W[o, j, u, v] * t[c(o, j)]
    with c(o, j) = (o // (O/groups)) * (C/groups) + j. Exact everywhere only if the conv has no
    padding: with zero padding the shift does not reach the border (see
    `fold_affine_before_conv_exact`).

    Args:
        W: (O, C/groups, kH, kW). b: (O,). scale, shift: (C,).
    """
    # s2, t2: (O, C/groups)
    s2 = _scale_per_weight_row(scale, W, groups)
    t2 = _scale_per_weight_row(shift, W, groups)
    W2 = W * s2[:, :, None, None]
    b2 = b + np.einsum("ojuv,oj->o", W, t2)
    return W2, b2


def fold_affine_before_conv_exact(W, b, scale, shift, groups: int, stride, pads, in_hw):
    """Affine before a zero-padded conv, exact at the borders.

    conv(x * s + t, W) + b = conv(x, W') + b' + corr with (W', b') from `fold_affine_before_conv`
    and corr = conv(t_field, W) + b - b' where t_field = t broadcast to (C, H, W): zero at interior
    outputs, nonzero where the kernel overlaps the padding.

    Returns:
        (W', b', corr) with corr: (O, Ho, Wo), or None when it is exactly zero (no padding).
    """
    W2, b2 = fold_affine_before_conv(W, b, scale, shift, groups)
    if not any(_pads4(pads)) or not np.any(shift):
        return W2, b2, None
    h, w = in_hw
    t_field = np.broadcast_to(shift[:, None, None], (shift.shape[0], h, w))
    field = conv_bias_field(t_field, W, stride, pads, groups) + b[:, None, None]
    corr = field - b2[:, None, None]
    return W2, b2, corr


def compose_matmul(W1, b1, W2, b2):
    """Two linears in a row: (x @ W1 + b1) @ W2 + b2 = x @ (W1 W2) + (b1 W2 + b2).

    Shapes: W1 (K, M), b1 (M,), W2 (M, N), b2 (N,) -> W (K, N), b (N,).
    """
    return W1 @ W2, b1 @ W2 + b2


def dense_kernel(W, groups: int):
    """Expand a grouped (or depthwise) kernel to the equivalent dense one.

    W: (O, C/groups, kH, kW) -> (O, C, kH, kW), block diagonal over the groups.
    """
    if groups == 1:
        return W
    o, cg, kh, kw = W.shape
    og = o // groups
    D = np.zeros((o, cg * groups, kh, kw), dtype=W.dtype)
    for g in range(groups):
        D[g * og : (g + 1) * og, g * cg : (g + 1) * cg] = W[g * og : (g + 1) * og]
    return D


def compose_conv_kernels(W1, stride1, W2):
    """Kernel of conv2 after conv1 (dense, dilation 1): conv(conv(x, W1, s1), W2, s2) = conv(x, K, s1 s2).

    K[o2, c, s1 a + u, s1 b + v] = sum_{o1} W2[o2, o1, a, b] W1[o1, c, u, v], so the effective size
    is k1 + (k2 - 1) s1. The result is exact wherever conv2 reads no zero padding (the caller's
    exactness rule: conv2 unpadded, or conv1 pointwise).

    Args:
        W1: (O1, C, k1H, k1W) dense. stride1: int or (sH, sW). W2: (O2, O1, k2H, k2W) dense.

    Returns:
        K: (O2, C, k1H + (k2H - 1) s1H, k1W + (k2W - 1) s1W).
    """
    sh, sw = _pair(stride1)
    o1, c, k1h, k1w = W1.shape
    o2, o1b, k2h, k2w = W2.shape
    if o1 != o1b:
        raise ValueError(f"conv2 expects {o1b} input channels, conv1 gives {o1}")
    K = np.zeros((o2, c, k1h + (k2h - 1) * sh, k1w + (k2w - 1) * sw), dtype=np.result_type(W1, W2))
    for a in range(k2h):
        for bb in range(k2w):
            K[:, :, sh * a : sh * a + k1h, sw * bb : sw * bb + k1w] += np.einsum(
                "pq,qcuv->pcuv", W2[:, :, a, bb], W1, optimize=True
            )
    return K


def compose_depthwise_kernels(W1, stride1, W2):
    """Two depthwise convs (channel multiplier 1) compose to one depthwise conv.

    K[c, 0, s1 a + u, s1 b + v] = sum W2[c, 0, a, b] W1[c, 0, u, v]. Shapes (C, 1, k, k) in,
    (C, 1, k1 + (k2 - 1) s1, ...) out.
    """
    sh, sw = _pair(stride1)
    c, _, k1h, k1w = W1.shape
    _, _, k2h, k2w = W2.shape
    K = np.zeros((c, 1, k1h + (k2h - 1) * sh, k1w + (k2w - 1) * sw), dtype=np.result_type(W1, W2))
    for a in range(k2h):
        for bb in range(k2w):
            K[:, :, sh * a : sh * a + k1h, sw * bb : sw * bb + k1w] += W2[:, :, a : a + 1, bb : bb + 1] * W1
    return K


def compose_1x1_after(W1, W2_1x1):
    """A 1x1 conv after a dense conv: K = W2 . W1 over the middle channels.

    W1: (O1, C, kH, kW) dense, W2_1x1: (O2, O1, 1, 1) -> (O2, C, kH, kW).
    """
    return np.einsum("pq,qcuv->pcuv", W2_1x1[:, :, 0, 0], W1, optimize=True)


def add_identity_to_kernel_centre(W, groups: int = 1):
    """Residual into a "same" conv: x + conv(x, W) = conv(x, W + I_centre).

    Adds 1 at the kernel centre on the channel diagonal: dense W[c, c, kc, kc] += 1; grouped/
    depthwise W[c, c mod (C/groups), kc, kc] += 1. Needs odd kernel sizes and O == C.

    Args:
        W: (C, C/groups, kH, kW).
    """
    o, cg, kh, kw = W.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel {kh}x{kw} has no centre")
    if o != cg * groups:
        raise ValueError(f"residual needs as many outputs as inputs: W is {W.shape}, groups {groups}")
    W = W.copy()
    c = np.arange(o)
    W[c, c % cg, kh // 2, kw // 2] += 1
    return W


def add_identity_to_matmul(W):
    """Residual into a square linear: x + x @ W = x @ (I + W). W: (D, D)."""
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"residual needs a square weight, got {W.shape}")
    return W + np.eye(W.shape[0], dtype=W.dtype)
