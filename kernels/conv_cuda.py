"""CUDA kernels for 2-D convolution; the contract, validation and dispatch are in kernels/conv.py.

The three conv2d passes are matrix products once the input is unfolded into columns, so the
GPU path is im2col tiles into cuBLAS (through CuPy's ``matmul``): a tile of samples is unfolded
into ``cols (groups, Cg*KH*KW, T*OH*OW)`` by :func:`_im2col_cuda`, and the multiply-adds run in
cuBLAS, which is far faster than one thread per output doing its own dot product.  Rows of
``cols`` are in ``(c, kh, kw)`` order, so ``w.reshape(groups, OCg, Cg*KH*KW)`` multiplies them
without a reorder; columns are ``(t, oh, ow)``.  The input gradient is the reverse: cuBLAS
forms ``gcols = W_g^T @ grad_y_g`` and :func:`_col2im_cuda` folds it back in gather form (one
thread per ``grad_x`` element, fixed ``(kh, kw)`` order: no atomics, deterministic).

In both kernels consecutive threads take consecutive output positions (``ow`` / ``iw``), so the
stores are coalesced and, at stride 1, so are the loads.  ``zero`` is a scalar of the arrays'
dtype, so accumulators keep that dtype (float32 stays float32 on the GPU).
"""
from __future__ import annotations

from numba import cuda

from .device import array_module, device_of, launch

# Each tile of samples unfolds into at most about this many bytes of columns (at least one
# sample), so the workspace stays bounded whatever the batch size.
_TILE_BYTES = 64 * 1024 * 1024


@cuda.jit(cache=True)
def _im2col_cuda(cols, x, n0, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, zero):
    # cols[g, (c*KH + kh)*KW + kw, (t*OH + oh)*OW + ow] = x[n0 + t, g*Cg + c, ih, iw]
    # (zero where (ih, iw) falls in the padding)
    i = cuda.grid(1)
    if i < cols.size:
        Kg, P = cols.shape[1], cols.shape[2]
        H, W = x.shape[2], x.shape[3]
        p = i % P
        r = (i // P) % Kg
        g = i // (P * Kg)
        ow = p % OW
        oh = (p // OW) % OH
        t = p // (OW * OH)
        kw = r % KW
        kh = (r // KW) % KH
        c = r // (KW * KH)
        Cg = Kg // (KH * KW)
        ih = oh * sh - pt + kh * dh
        iw = ow * sw - pl + kw * dw
        v = zero
        if ih >= 0 and ih < H and iw >= 0 and iw < W:
            v = x[n0 + t, g * Cg + c, ih, iw]
        cols[g, r, p] = v


@cuda.jit(cache=True)
def _col2im_cuda(gx, gcols, n0, T, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, zero):
    # gx[n0 + t, c, ih, iw] = sum of the gcols entries _im2col_cuda would have read it into.
    i = cuda.grid(1)
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    if i < T * C * H * W:
        Kg = gcols.shape[1]
        Cg = Kg // (KH * KW)
        iw = i % W
        ih = (i // W) % H
        c = (i // (W * H)) % C
        t = i // (W * H * C)
        g = c // Cg
        cl = c - g * Cg
        acc = zero
        for kh in range(KH):
            th = ih + pt - kh * dh
            if th >= 0 and th % sh == 0 and th // sh < OH:
                oh = th // sh
                for kw in range(KW):
                    tw = iw + pl - kw * dw
                    if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                        acc += gcols[g, (cl * KH + kh) * KW + kw, (t * OH + oh) * OW + tw // sw]
        gx[n0 + t, c, ih, iw] = acc


@cuda.jit(cache=True)
def _conv2d_backward_bias_cuda(gb, gy, zero):
    oc = cuda.grid(1)
    if oc < gb.size:
        acc = zero
        for n in range(gy.shape[0]):
            for p in range(gy.shape[2]):
                acc += gy[n, oc, p]
        gb[oc] = acc


# ---------------------------------------------------------------- passes (glue around cuBLAS)
def _tiles(N, Kg, groups, OH, OW, itemsize):
    """Sample ranges ``(n0, n1)`` in a fixed order, each unfolding into <= _TILE_BYTES."""
    per_sample = groups * Kg * OH * OW * itemsize
    T = max(1, min(N, _TILE_BYTES // max(1, per_sample)))
    return [(n0, min(N, n0 + T)) for n0 in range(0, N, T)]


def _unfold(xp, x, n0, n1, Kg, groups, out_hw, KH, KW, geo):
    OH, OW = out_hw
    cols = xp.empty((groups, Kg, (n1 - n0) * OH * OW), dtype=x.dtype)
    g = geo
    launch(_im2col_cuda, cols.size, cols, x, n0, OH, OW, KH, KW, g.sh, g.sw, g.pt, g.pl,
           g.dh, g.dw, x.dtype.type(0))
    return cols


def _grouped(xp, a, groups):
    """(T, OC, OH, OW) -> (groups, OCg, T*OH*OW): the layout of a product with cols."""
    T, OC = a.shape[0], a.shape[1]
    return xp.ascontiguousarray(
        a.reshape(T, groups, OC // groups, -1).transpose(1, 2, 0, 3)
        .reshape(groups, OC // groups, -1))


def _conv2d_forward_cuda(y, x, w, b, geo):
    """y = conv2d(x, w) + b into the contiguous (N, OC, OH, OW) ``y``; x, w, b contiguous."""
    xp = array_module(device_of(x))
    N, OC, OH, OW = y.shape
    G = geo.groups
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    Kg = Cg * KH * KW
    wg = w.reshape(G, OC // G, Kg)
    for n0, n1 in _tiles(N, Kg, G, OH, OW, x.itemsize):
        cols = _unfold(xp, x, n0, n1, Kg, G, (OH, OW), KH, KW, geo)
        yg = xp.matmul(wg, cols)                       # (G, OCg, T*OH*OW), cuBLAS
        y[n0:n1] = (yg.reshape(G, OC // G, n1 - n0, OH * OW).transpose(2, 0, 1, 3)
                    .reshape(n1 - n0, OC, OH, OW))
    y += b.reshape(1, OC, 1, 1)


def _conv2d_backward_weight_cuda(grad_w, grad_y, x, geo):
    """grad_w (OC, Cg, KH, KW) of conv2d; sums tile products in a fixed order."""
    xp = array_module(device_of(x))
    N, OC, OH, OW = grad_y.shape
    G = geo.groups
    Cg, KH, KW = grad_w.shape[1], grad_w.shape[2], grad_w.shape[3]
    Kg = Cg * KH * KW
    acc = xp.zeros((G, OC // G, Kg), dtype=x.dtype)
    for n0, n1 in _tiles(N, Kg, G, OH, OW, x.itemsize):
        cols = _unfold(xp, x, n0, n1, Kg, G, (OH, OW), KH, KW, geo)
        acc += xp.matmul(_grouped(xp, grad_y[n0:n1], G), cols.transpose(0, 2, 1))
    grad_w[...] = acc.reshape(OC, Cg, KH, KW)


def _conv2d_backward_input_cuda(grad_x, grad_y, w, geo):
    """grad_x (N, C, H, W) of conv2d: gcols = W_g^T @ grad_y_g per tile, folded by col2im."""
    xp = array_module(device_of(grad_y))
    N, OC, OH, OW = grad_y.shape
    C, H, W = grad_x.shape[1], grad_x.shape[2], grad_x.shape[3]
    G = geo.groups
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    Kg = Cg * KH * KW
    wgt = w.reshape(G, OC // G, Kg).transpose(0, 2, 1)
    g = geo
    for n0, n1 in _tiles(N, Kg, G, OH, OW, grad_y.itemsize):
        gcols = xp.matmul(wgt, _grouped(xp, grad_y[n0:n1], G))   # (G, Kg, T*OH*OW)
        T = n1 - n0
        launch(_col2im_cuda, T * C * H * W, grad_x, gcols, n0, T, OH, OW, KH, KW, g.sh, g.sw,
               g.pt, g.pl, g.dh, g.dw, grad_y.dtype.type(0))
