"""Slow, obvious NumPy references for kernels/pool.py: one Python loop per output element.

They follow torch.nn.functional's definitions directly (floor mode, implicit -inf or zero
padding) and compute in float64, except the max pool, whose values are exact in any dtype.
"""
import numpy as np


def out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def window(o, k, s, p, size):
    """The in-bounds input range ``[start, stop)`` of window ``o`` along one axis."""
    start = o * s - p
    return max(start, 0), min(start + k, size)


def max_pool2d(x, k, s, p):
    """``(y, indices)``: the first maximum per window; a NaN wins, the last NaN if several."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), x.dtype)
    indices = np.empty((N, C, OH, OW), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(OH):
                hs, he = window(oh, kh, sh, ph, H)
                for ow in range(OW):
                    ws, we = window(ow, kw, sw, pw, W)
                    best, arg = -np.inf, hs * W + ws
                    for h in range(hs, he):
                        for w in range(ws, we):
                            v = x[n, c, h, w]
                            if v > best or np.isnan(v):
                                best, arg = v, h * W + w
                    y[n, c, oh, ow], indices[n, c, oh, ow] = best, arg
    return y, indices


def max_pool2d_backward(grad_y, indices, x_shape):
    """Each output's gradient goes to the input element its index names."""
    N, C, H, W = x_shape
    grad_x = np.zeros((N, C, H * W), np.float64)
    for n in range(N):
        for c in range(C):
            for g, j in zip(grad_y[n, c].ravel(), indices[n, c].ravel()):
                grad_x[n, c, j] += g
    return grad_x.reshape(x_shape)


def _divisor(oh, ow, k, s, p, H, W, count_include_pad):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    if count_include_pad:
        rows = min(oh * sh - ph + kh, H + ph) - (oh * sh - ph)
        cols = min(ow * sw - pw + kw, W + pw) - (ow * sw - pw)
    else:
        hs, he = window(oh, kh, sh, ph, H)
        ws, we = window(ow, kw, sw, pw, W)
        rows, cols = he - hs, we - ws
    return rows * cols


def avg_pool2d(x, k, s, p, count_include_pad=True):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, C, H, W = x.shape
    OH, OW = out_size(H, kh, sh, ph), out_size(W, kw, sw, pw)
    y = np.empty((N, C, OH, OW), np.float64)
    for oh in range(OH):
        hs, he = window(oh, kh, sh, ph, H)
        for ow in range(OW):
            ws, we = window(ow, kw, sw, pw, W)
            total = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3))
            y[:, :, oh, ow] = total / _divisor(oh, ow, k, s, p, H, W, count_include_pad)
    return y


def avg_pool2d_backward(grad_y, x_shape, k, s, p, count_include_pad=True):
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    N, C, H, W = x_shape
    grad_x = np.zeros(x_shape, np.float64)
    for oh in range(grad_y.shape[2]):
        hs, he = window(oh, kh, sh, ph, H)
        for ow in range(grad_y.shape[3]):
            ws, we = window(ow, kw, sw, pw, W)
            share = grad_y[:, :, oh, ow] / _divisor(oh, ow, k, s, p, H, W, count_include_pad)
            grad_x[:, :, hs:he, ws:we] += share[:, :, None, None]
    return grad_x


def global_avg_pool2d(x):
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True)


def global_avg_pool2d_backward(grad_y, x_shape):
    return np.broadcast_to(grad_y.astype(np.float64) / (x_shape[2] * x_shape[3]), x_shape)


def upsample_nearest2d(x, scale):
    sh, sw = scale
    N, C, H, W = x.shape
    y = np.empty((N, C, H * sh, W * sw), x.dtype)
    for h in range(H * sh):
        for w in range(W * sw):
            y[:, :, h, w] = x[:, :, h // sh, w // sw]
    return y


def upsample_nearest2d_backward(grad_y, scale):
    sh, sw = scale
    N, C, OH, OW = grad_y.shape
    grad_x = np.zeros((N, C, OH // sh, OW // sw), np.float64)
    for h in range(OH):
        for w in range(OW):
            grad_x[:, :, h // sh, w // sw] += grad_y[:, :, h, w]
    return grad_x
