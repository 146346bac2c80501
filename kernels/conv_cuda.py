"""CUDA kernels for 2-D convolution; the contract, validation and dispatch are in kernels/conv.py.

The three conv2d passes are matrix products once the input is unfolded into columns, so the
GPU path is im2col tiles into cuBLAS (through CuPy's ``matmul``).  A tile of ``T`` samples is
unfolded by :func:`_im2col_cuda` into ``cols (T, G, Kg1, P)`` (``Kg = Cg*KH*KW`` rows in
``(c, kh, kw)`` order, ``P = OH*OW`` columns in ``(oh, ow)`` order, and with a bias one more
row of ones, ``Kg1 = Kg + 1``).  The forward is then one batched product per tile,
``[W_g | b_g] @ cols[t, g]``, written by cuBLAS straight into ``y[n0:n1]`` viewed as
``(T, G, OCg, P)``: the output is NCHW without a copy and the bias rides in the GEMM as its
last column.  The weight gradient is ``grad_y[t, g] @ cols[t, g]^T`` batched over the tile
and summed over ``t`` in a fixed order; the input gradient is ``W_g^T @ grad_y[t, g]``
batched, folded back by :func:`_col2im_cuda` in gather form (one thread per ``grad_x``
element, fixed ``(kh, kw)`` order: no atomics, deterministic).

Index math: one thread per (sample, channel, output position) for im2col, looping over the
KH*KW window it unfolds, so the thread's divisions are paid once for KH*KW elements; they are
32-bit unsigned divisions (a 64-bit one is a ~70-instruction software routine on NVIDIA GPUs),
which :func:`_check_index_range` makes safe by keeping every launch under 2**32 threads.
Consecutive threads take consecutive ``ow`` (``iw`` in col2im), so stores are coalesced and,
at stride 1, so are loads.  ``zero`` is a scalar of the arrays' dtype, so accumulators keep
that dtype (float32 stays float32 on the GPU).

The bias gradient is a two-stage deterministic reduction: :func:`_bias_partials_cuda` runs one
block per output channel, each thread summing a fixed strided slice of ``(n, p)``, and
:func:`_bias_finish_cuda` adds each channel's ``B`` partials in order.
"""
from __future__ import annotations

from numba import cuda, int64, uint32

from .device import array_module, device_of, launch

# Each tile of samples unfolds into at most about this many bytes of columns (at least one
# sample), so the workspace stays bounded whatever the batch size.
_TILE_BYTES = 64 * 1024 * 1024
# Thread indices are decomposed with 32-bit unsigned divisions.
_MAX_THREADS = 2 ** 32 - 1


@cuda.jit(cache=True)
def _im2col_cuda(cols, x, n0, Cg, OW, KH, KW, sh, sw, pt, pl, dh, dw, zero, one):
    # cols[t, g, (cl*KH + kh)*KW + kw, oh*OW + ow] = x[n0 + t, g*Cg + cl, ih, iw] (zero in the
    # padding); when cols has a row more than Kg, that row is ones (the bias's column of W).
    # One thread per (t, c, p): i = (t*C + c)*P + p.
    i = cuda.grid(1)
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    T, P = cols.shape[0], cols.shape[3]
    if i < T * C * P:
        iu = uint32(i)
        # Every intermediate goes back through uint32(): a difference or product of two
        # uint32 is typed uint64, and LLVM would then keep the next division 64-bit.
        tcu = uint32(iu // uint32(P))
        pu = uint32(iu - tcu * uint32(P))
        tu = uint32(tcu // uint32(C))
        cu = uint32(tcu - tu * uint32(C))
        gu = uint32(cu // uint32(Cg))
        ohu = uint32(pu // uint32(OW))
        owu = uint32(pu - ohu * uint32(OW))
        # Back to signed 64-bit for the window arithmetic (ih, iw may be negative).
        t, c, g, p = int64(tu), int64(cu), int64(gu), int64(pu)
        cl = c - g * Cg
        h0 = int64(ohu) * sh - pt
        w0 = int64(owu) * sw - pl
        row = cl * KH * KW
        for kh in range(KH):
            ih = h0 + kh * dh
            inside_h = ih >= 0 and ih < H
            for kw in range(KW):
                iw = w0 + kw * dw
                v = zero
                if inside_h and iw >= 0 and iw < W:
                    v = x[n0 + t, c, ih, iw]
                cols[t, g, row + kh * KW + kw, p] = v
        if cl == 0 and cols.shape[2] > Cg * KH * KW:
            cols[t, g, cols.shape[2] - 1, p] = one


@cuda.jit(cache=True)
def _col2im_cuda(gx, gcols, n0, Cg, OH, OW, KH, KW, sh, sw, pt, pl, dh, dw, zero):
    # gx[n0 + t, c, ih, iw] = sum of the gcols[t, g, r, p] entries _im2col_cuda would have
    # read it into.  One thread per grad_x element of the tile: i = ((t*C + c)*H + ih)*W + iw.
    i = cuda.grid(1)
    T = gcols.shape[0]
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    if i < T * C * H * W:
        iu = uint32(i)
        ru = uint32(iu // uint32(W))
        iwu = uint32(iu - ru * uint32(W))
        qu = uint32(ru // uint32(H))
        ihu = uint32(ru - qu * uint32(H))
        tu = uint32(qu // uint32(C))
        cu = uint32(qu - tu * uint32(C))
        gu = uint32(cu // uint32(Cg))
        t, c, g, ih, iw = int64(tu), int64(cu), int64(gu), int64(ihu), int64(iwu)
        row = (c - g * Cg) * KH * KW
        acc = zero
        for kh in range(KH):
            th = ih + pt - kh * dh
            if th < 0:
                break           # th only falls as kh grows
            oh = th
            if sh != 1:
                oh = int64(uint32(th) // uint32(sh))
                if oh * sh != th:
                    continue
            if oh >= OH:
                continue
            for kw in range(KW):
                tw = iw + pl - kw * dw
                if tw < 0:
                    break
                ow = tw
                if sw != 1:
                    ow = int64(uint32(tw) // uint32(sw))
                    if ow * sw != tw:
                        continue
                if ow < OW:
                    acc += gcols[t, g, row + kh * KW + kw, oh * OW + ow]
        gx[n0 + t, c, ih, iw] = acc


@cuda.jit(cache=True)
def _bias_partials_cuda(part, gy, zero):
    # part[oc, j] = sum of gy[n, oc, p] over the flat (n, p) positions j, j + B, j + 2B, ...
    # Block oc, thread j: consecutive threads read consecutive p (coalesced); the counters
    # (n, p) advance by B without a division.
    B = part.shape[1]
    oc = cuda.blockIdx.x
    j = cuda.threadIdx.x
    N, P = gy.shape[0], gy.shape[2]
    if oc < part.shape[0] and j < B:
        acc = zero
        n = 0
        p = j
        while p >= P:
            p -= P
            n += 1
        while n < N:
            acc += gy[n, oc, p]
            p += B
            while p >= P:
                p -= P
                n += 1
        part[oc, j] = acc


@cuda.jit(cache=True)
def _bias_finish_cuda(gb, part, zero):
    oc = cuda.grid(1)
    if oc < gb.size:
        acc = zero
        for j in range(part.shape[1]):
            acc += part[oc, j]
        gb[oc] = acc


# ---------------------------------------------------------------- passes (glue around cuBLAS)
def _check_index_range(n_threads, what):
    if n_threads > _MAX_THREADS:
        raise ValueError(f"{what}: one sample needs {n_threads} CUDA threads, more than the "
                         f"2**32 - 1 the 32-bit index math of the conv kernels allows")


def _tiles(N, rows, OH, OW, itemsize):
    """Sample ranges ``(n0, n1)`` in a fixed order, each unfolding into <= _TILE_BYTES."""
    per_sample = rows * OH * OW * itemsize
    T = max(1, min(N, _TILE_BYTES // max(1, per_sample)))
    return [(n0, min(N, n0 + T)) for n0 in range(0, N, T)]


def _unfold(xp, x, n0, n1, G, Kg1, KH, KW, out_hw, geo):
    """cols (T, G, Kg1, OH*OW) of samples n0:n1; a last row of ones when Kg1 > Kg."""
    OH, OW = out_hw
    C = x.shape[1]
    T = n1 - n0
    cols = xp.empty((T, G, Kg1, OH * OW), dtype=x.dtype)
    n_threads = T * C * OH * OW
    _check_index_range(n_threads, "x")
    g = geo
    launch(_im2col_cuda, n_threads, cols, x, n0, C // G, OW, KH, KW, g.sh, g.sw, g.pt, g.pl,
           g.dh, g.dw, x.dtype.type(0), x.dtype.type(1))
    return cols


def _conv2d_forward_cuda(y, x, w, b, geo):
    """y = conv2d(x, w) + b into the contiguous (N, OC, OH, OW) ``y``; x, w, b contiguous.

    ``b`` may be None.  cuBLAS writes each tile's product straight into ``y``.
    """
    xp = array_module(device_of(x))
    N, OC, OH, OW = y.shape
    G = geo.groups
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    Kg, OCg = Cg * KH * KW, OC // G
    wg = w.reshape(G, OCg, Kg)
    if b is not None:
        wg = xp.concatenate([wg, b.reshape(G, OCg, 1)], axis=2)   # (G, OCg, Kg + 1)
    Kg1 = wg.shape[2]
    yt = y.reshape(N, G, OCg, OH * OW)
    for n0, n1 in _tiles(N, G * Kg1, OH, OW, x.itemsize):
        cols = _unfold(xp, x, n0, n1, G, Kg1, KH, KW, (OH, OW), geo)
        xp.matmul(wg, cols, out=yt[n0:n1])            # (T, G, OCg, P), batched cuBLAS


def _conv2d_backward_weight_cuda(grad_w, grad_y, x, geo):
    """grad_w (OC, Cg, KH, KW) of conv2d; tile products summed over samples in a fixed order."""
    xp = array_module(device_of(x))
    N, OC, OH, OW = grad_y.shape
    G = geo.groups
    Cg, KH, KW = grad_w.shape[1], grad_w.shape[2], grad_w.shape[3]
    Kg, OCg = Cg * KH * KW, OC // G
    gy = grad_y.reshape(N, G, OCg, OH * OW)
    acc = xp.zeros((G, OCg, Kg), dtype=x.dtype)
    for n0, n1 in _tiles(N, G * Kg, OH, OW, x.itemsize):
        cols = _unfold(xp, x, n0, n1, G, Kg, KH, KW, (OH, OW), geo)
        acc += xp.matmul(gy[n0:n1], cols.transpose(0, 1, 3, 2)).sum(axis=0)
    grad_w[...] = acc.reshape(OC, Cg, KH, KW)


def _conv2d_backward_input_cuda(grad_x, grad_y, w, geo):
    """grad_x (N, C, H, W) of conv2d: gcols = W_g^T @ grad_y[t, g] per tile, folded by col2im."""
    xp = array_module(device_of(grad_y))
    N, OC, OH, OW = grad_y.shape
    C, H, W = grad_x.shape[1], grad_x.shape[2], grad_x.shape[3]
    G = geo.groups
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    Kg, OCg = Cg * KH * KW, OC // G
    wgt = w.reshape(G, OCg, Kg).transpose(0, 2, 1)
    gy = grad_y.reshape(N, G, OCg, OH * OW)
    g = geo
    for n0, n1 in _tiles(N, G * Kg, OH, OW, grad_y.itemsize):
        gcols = xp.matmul(wgt, gy[n0:n1])              # (T, G, Kg, P), batched cuBLAS
        n_threads = (n1 - n0) * C * H * W
        _check_index_range(n_threads, "grad_x")
        launch(_col2im_cuda, n_threads, grad_x, gcols, n0, Cg, OH, OW, KH, KW, g.sh, g.sw,
               g.pt, g.pl, g.dh, g.dw, grad_y.dtype.type(0))


def _bias_block(count):
    """Threads per channel's block: a warp per 8 values summed, from one warp up to 256."""
    warps = min(8, max(1, -(-count // (32 * 8))))
    return 32 * warps


def _conv2d_backward_bias_cuda(grad_b, gy):
    """grad_b (OC,) = gy (N, OC, P) summed over n and p: one block per channel, then in order."""
    xp = array_module(device_of(gy))
    N, OC, P = gy.shape
    B = _bias_block(N * P)
    part = xp.empty((OC, B), dtype=gy.dtype)
    launch(_bias_partials_cuda, OC * B, part, gy, gy.dtype.type(0), block=B)
    launch(_bias_finish_cuda, OC, grad_b, part, gy.dtype.type(0))
