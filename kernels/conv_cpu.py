"""CPU loops for 2-D convolution; the contract, validation and dispatch are in kernels/conv.py.

Two designs, picked per shape class by ``kernels.conv._use_direct``:

* GEMM (everything but tiny products).  Work is split into column bands: S whole samples
  when a sample is small (LeNet: 8 samples, one GEMM of 512 positions instead of eight of 64,
  1.8x the BLAS rate), else R output rows of one sample.  Each thread copies the input rows
  a band needs into a zero-padded NHWC buffer, expands them into patch-major columns
  ``cols[p, (kh, kw, c)]`` (a whole ``kw`` run of channels is one contiguous copy) and calls
  ``np.dot``, which Numba sends to SciPy's BLAS, kept single-threaded by ``kernels.threads``
  so that the only thread pool is Numba's.  The product is ``cols (T, K) @ w2.T (K, OCg)``:
  of the four layouts of this GEMM it is the one OpenBLAS runs fastest here (0.69 against
  0.83 ms for NCHW-order columns on a VGG sample), and the transpose back to NCHW, with the
  bias fused, costs less than the difference.  Workspaces are per thread and bounded by the
  band (``kernels.conv._BAND_BYTES``), never by the batch.
* direct (tiny products: LeNet c1, depthwise).  Loops over a zero-padded NCHW plane; at
  stride 1 each kernel tap is one long loop (see "wide rows" below).

Weights for the GEMM design are ``w2 (groups, OCg, KH*KW*Cg)`` in ``(kh, kw, c)`` order.
Indices are non-negative loop counters over pre-sliced views, or unsigned flat offsets:
Numba adds wrap-around code to (and stops vectorising) any index it cannot prove
non-negative.

Every output element is written by exactly one item, and an item's arithmetic depends on
the shapes only (bands and chunks never on the thread count), so results are bitwise
identical from run to run, for any number of threads, and from any calling Python thread
(the BLAS calls run single-threaded whichever thread enters them: see kernels.threads).  The weight gradient sums
per-chunk partials in a fixed order, the chunks fixed by the batch size.
"""
from __future__ import annotations

import numpy as np
from numba import get_thread_id, njit, prange


# ---------------------------------------------------------------- GEMM design: helpers
@njit(cache=True)
def _pad_rows_nhwc(xp, x, c0, q0, pt, pl):
    """``xp[i, j, c] = x[c0 + c, q0 + i - pt, j - pl]``, zero where that is outside ``x``."""
    Hb, Wp, Cg = xp.shape
    H, W = x.shape[1], x.shape[2]
    lo = min(pl, Wp)
    hi = min(pl + W, Wp)
    for i in range(Hb):
        h = q0 + i - pt
        row = xp[i]
        if h < 0 or h >= H:
            row[:, :] = 0
            continue
        row[:lo, :] = 0
        row[hi:, :] = 0
        dst = row[lo:hi]
        for c in range(Cg):
            src = x[c0 + c, h]
            for j in range(hi - lo):
                dst[j, c] = src[j]


@njit(cache=True)
def _im2col(cols, xp, OW, KH, KW, sh, sw, dh, dw):
    """Patch-major columns of a band: ``cols[t, (kh, kw, c)]`` for output ``t = i*OW + ow``."""
    # Flat unsigned offsets: runs are as short as KW*Cg = 5 floats on LeNet layers, where
    # building a slice per run cost twice as much, and signed flat offsets stop vectorising.
    Hb, Wp, Cg = xp.shape
    T, K = cols.shape
    xf = xp.reshape(-1)
    cf = cols.reshape(-1)
    run = np.uint64(KW * Cg)
    for t in range(T):
        i = t // OW
        ow = t - i * OW
        for kh in range(KH):
            src = np.uint64(((i * sh + kh * dh) * Wp + ow * sw) * Cg)
            dst = np.uint64(t * K + kh * KW * Cg)
            if dw == 1:
                for j in range(run):
                    cf[dst + j] = xf[src + j]
            else:
                for kw in range(KW):
                    s = src + np.uint64(kw * dw * Cg)
                    d = dst + np.uint64(kw * Cg)
                    for c in range(np.uint64(Cg)):
                        cf[d + c] = xf[s + c]


@njit(cache=True)
def _col2im_add(gxp, gcols, oh0, OW, KH, KW, sh, sw, dh, dw):
    """The adjoint of ``_im2col`` into a whole padded sample: ``gxp += scatter(gcols)``."""
    Hp, Wp, Cg = gxp.shape
    T, K = gcols.shape
    gf = gxp.reshape(-1)
    cf = gcols.reshape(-1)
    run = np.uint64(KW * Cg)
    for t in range(T):
        i = t // OW
        ow = t - i * OW
        for kh in range(KH):
            dst = np.uint64((((oh0 + i) * sh + kh * dh) * Wp + ow * sw) * Cg)
            src = np.uint64(t * K + kh * KW * Cg)
            if dw == 1:
                for j in range(run):
                    gf[dst + j] += cf[src + j]
            else:
                for kw in range(KW):
                    d = dst + np.uint64(kw * dw * Cg)
                    s = src + np.uint64(kw * Cg)
                    for c in range(np.uint64(Cg)):
                        gf[d + c] += cf[s + c]


@njit(cache=True)
def _unpad_nhwc(gx, gxp, c0, pt, pl):
    """``gx[c0 + c, h, w] = gxp[h + pt, w + pl, c]``; input pixels no window reaches get 0."""
    Hp, Wp, Cg = gxp.shape
    H, W = gx.shape[1], gx.shape[2]
    hs = max(0, min(H, Hp - pt))
    ws = max(0, min(W, Wp - pl))
    for c in range(Cg):
        plane = gx[c0 + c]
        plane[hs:, :] = 0
        for h in range(hs):
            dst = plane[h]
            src = gxp[pt + h, pl:]
            for w in range(ws):
                dst[w] = src[w, c]
            dst[ws:] = 0


@njit(cache=True)
def _band_cols(cols, xbuf, x, n0, S, c0, oh0, R, KH, KW, sh, sw, pt, pl, dh, dw, OW):
    """Columns of a band: rows ``oh0 .. oh0+R`` of samples ``n0 .. n0+S``, sample after sample."""
    Hb = (R - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    Cg = cols.shape[1] // (KH * KW)
    xp = xbuf[:Hb * Wp * Cg].reshape(Hb, Wp, Cg)
    T = R * OW
    for s in range(S):
        _pad_rows_nhwc(xp, x[n0 + s], c0, oh0 * sh, pt, pl)
        _im2col(cols[s * T:(s + 1) * T], xp, OW, KH, KW, sh, sw, dh, dw)


# ---------------------------------------------------------------- GEMM design: the three passes
# A band is S whole samples (small images) or R rows of one sample (big ones): S*R*OW
# positions, one GEMM.  Items are (block of S samples, group, band of R rows).
@njit(parallel=True, cache=True)
def _conv2d_forward_gemm_cpu(y, x, w2, b, KH, KW, sh, sw, pt, pl, dh, dw, S, R, nthreads):
    N, C = x.shape[0], x.shape[1]
    groups, OCg, K = w2.shape
    Cg = C // groups
    OH, OW = y.shape[2], y.shape[3]
    blocks = (N + S - 1) // S
    bands = (OH + R - 1) // R
    items = blocks * groups * bands
    Hb = (R - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    yf = y.reshape(N, OCg * groups, OH * OW)
    xbuf = np.empty((nthreads, Hb * Wp * Cg), x.dtype)
    cbuf = np.empty((nthreads, S * R * OW * K), x.dtype)
    obuf = np.empty((nthreads, S * R * OW * OCg), x.dtype)
    for item in prange(items):
        th = get_thread_id()
        n0 = (item // (groups * bands)) * S
        g = (item // bands) % groups
        oh0 = (item % bands) * R
        Sb = min(S, N - n0)
        Rb = min(R, OH - oh0)
        T = Rb * OW
        cols = cbuf[th, :Sb * T * K].reshape(Sb * T, K)
        _band_cols(cols, xbuf[th], x, n0, Sb, g * Cg, oh0, Rb, KH, KW, sh, sw, pt, pl, dh,
                   dw, OW)
        out = obuf[th, :Sb * T * OCg].reshape(Sb * T, OCg)
        np.dot(cols, w2[g].T, out)
        # back to NCHW, with the bias fused into the same pass
        for s in range(Sb):
            part = out[s * T:(s + 1) * T]
            for o in range(OCg):
                dst = yf[n0 + s, g * OCg + o, oh0 * OW:]
                bias = b[g * OCg + o]
                for t in range(T):
                    dst[t] = part[t, o] + bias


@njit(parallel=True, cache=True)
def _conv2d_backward_input_gemm_cpu(gx, gy, w2, KH, KW, sh, sw, pt, pl, dh, dw, S, R, nthreads):
    # Items are (block of S samples, group) with every row band inside: col2im scatters into
    # overlapping input rows, so a sample stays with one thread, which adds its bands in a
    # fixed order.
    N, C = gx.shape[0], gx.shape[1]
    groups, OCg, K = w2.shape
    Cg = C // groups
    OH, OW = gy.shape[2], gy.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    blocks = (N + S - 1) // S
    items = blocks * groups
    gyf = gy.reshape(N, OCg * groups, OH * OW)
    xbuf = np.empty((nthreads, Hp * Wp * Cg), gx.dtype)
    gbuf = np.empty((nthreads, S * R * OW * OCg), gx.dtype)
    cbuf = np.empty((nthreads, S * R * OW * K), gx.dtype)
    for item in prange(items):
        th = get_thread_id()
        gxp = xbuf[th].reshape(Hp, Wp, Cg)
        n0 = (item // groups) * S
        g = item % groups
        Sb = min(S, N - n0)
        for oh0 in range(0, OH, R):
            T = min(R, OH - oh0) * OW
            gyt = gbuf[th, :Sb * T * OCg].reshape(Sb * T, OCg)
            for s in range(Sb):
                for o in range(OCg):
                    src = gyf[n0 + s, g * OCg + o, oh0 * OW:]
                    for t in range(T):
                        gyt[s * T + t, o] = src[t]
            gcols = cbuf[th, :Sb * T * K].reshape(Sb * T, K)
            np.dot(gyt, w2[g], gcols)
            for s in range(Sb):
                if oh0 == 0:
                    gxp[:, :, :] = 0
                _col2im_add(gxp, gcols[s * T:(s + 1) * T], oh0, OW, KH, KW, sh, sw, dh, dw)
                if oh0 + R >= OH:
                    _unpad_nhwc(gx[n0 + s], gxp, g * Cg, pt, pl)


@njit(parallel=True, cache=True)
def _conv2d_backward_weight_gemm_cpu(part, gy, x, KH, KW, sh, sw, pt, pl, dh, dw, S, R,
                                     nthreads):
    # part[k] is the weight gradient of chunk k of the batch (chunks and bands fixed by the
    # caller from the shapes alone); the caller sums them in order, so the result is
    # run-to-run identical and independent of the thread count.
    N, C = x.shape[0], x.shape[1]
    chunks, groups, OCg, K = part.shape
    Cg = C // groups
    OH, OW = gy.shape[2], gy.shape[3]
    Hb = (R - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    gyf = gy.reshape(N, OCg * groups, OH * OW)
    xbuf = np.empty((nthreads, Hb * Wp * Cg), x.dtype)
    cbuf = np.empty((nthreads, S * R * OW * K), x.dtype)
    gbuf = np.empty((nthreads, OCg * S * R * OW), x.dtype)
    tbuf = np.empty((nthreads, OCg * K), x.dtype)
    for k in prange(chunks):
        th = get_thread_id()
        tmp = tbuf[th].reshape(OCg, K)
        part[k] = 0
        end = (k + 1) * N // chunks
        for n0 in range(k * N // chunks, end, S):
            Sb = min(S, end - n0)
            for g in range(groups):
                for oh0 in range(0, OH, R):
                    Rb = min(R, OH - oh0)
                    T = Rb * OW
                    cols = cbuf[th, :Sb * T * K].reshape(Sb * T, K)
                    _band_cols(cols, xbuf[th], x, n0, Sb, g * Cg, oh0, Rb, KH, KW, sh, sw,
                               pt, pl, dh, dw, OW)
                    gyt = gbuf[th, :OCg * Sb * T].reshape(OCg, Sb * T)
                    for o in range(OCg):
                        dst = gyt[o]
                        for s in range(Sb):
                            src = gyf[n0 + s, g * OCg + o, oh0 * OW:]
                            for t in range(T):
                                dst[s * T + t] = src[t]
                    np.dot(gyt, cols, tmp)
                    acc = part[k, g]
                    for o in range(OCg):
                        a = acc[o]
                        src = tmp[o]
                        for j in range(K):
                            a[j] += src[j]


# ---------------------------------------------------------------- direct design (small layers)
# Stride 1 uses "wide rows": with the output's rows laid out at the padded input's pitch Wp,
# tap (kh, kw) of a plane is one flat shift, so each tap is a single loop over
# L = (OH-1)*Wp + OW elements (the Wp-OW extra columns per row are computed and dropped),
# instead of OH loops of OW: 3-4x faster on LeNet-size planes.  Other strides loop by row.
# ``contract`` lets LLVM fuse the multiply-adds (without it there is no vfmadd at all).
@njit(cache=True)
def _pad_nchw(xp, x, c0, pt, pl):
    """``xp[c, i, j] = x[c0 + c, i - pt, j - pl]``, zero where that is outside ``x``."""
    Cg, Hp, Wp = xp.shape
    H, W = x.shape[1], x.shape[2]
    hs = max(0, min(H, Hp - pt))
    ws = max(0, min(W, Wp - pl))
    for c in range(Cg):
        plane = xp[c]
        plane[:, :] = 0
        for h in range(hs):
            dst = plane[pt + h, pl:]
            src = x[c0 + c, h]
            for w in range(ws):
                dst[w] = src[w]


@njit(cache=True)
def _widen(wide, plane, Wp):
    """``plane (OH, OW)`` into wide rows of pitch ``Wp``, the extra columns zero."""
    OH, OW = plane.shape
    for oh in range(OH):
        dst = wide[oh * Wp:]
        src = plane[oh]
        for ow in range(OW):
            dst[ow] = src[ow]
        if oh < OH - 1:
            for j in range(OW, Wp):
                dst[j] = 0


@njit(parallel=True, cache=True, fastmath={"contract"})
def _conv2d_forward_direct_cpu(y, x, w, b, sh, sw, pt, pl, dh, dw, groups, nthreads):
    N, C = x.shape[0], x.shape[1]
    OC, Cg, KH, KW = w.shape
    OCg = OC // groups
    OH, OW = y.shape[2], y.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    L = (OH - 1) * Wp + OW
    items = N * groups
    xbuf = np.empty((nthreads, Cg * Hp * Wp), x.dtype)
    abuf = np.empty((nthreads, Hp * Wp), x.dtype)
    for item in prange(items):
        th = get_thread_id()
        xp = xbuf[th].reshape(Cg, Hp, Wp)
        acc = abuf[th, :L]
        n = item // groups
        g = item % groups
        _pad_nchw(xp, x[n], g * Cg, pt, pl)
        for o in range(OCg):
            oc = g * OCg + o
            yp = y[n, oc]
            if sh == 1 and sw == 1:
                acc[:] = b[oc]
                for c in range(Cg):
                    xf = xp[c].reshape(-1)
                    for kh in range(KH):
                        # two taps per pass halve the accumulator's loads and stores
                        for kw in range(0, KW - 1, 2):
                            w0 = w[oc, c, kh, kw]
                            w1 = w[oc, c, kh, kw + 1]
                            s0 = xf[kh * dh * Wp + kw * dw:]
                            s1 = xf[kh * dh * Wp + (kw + 1) * dw:]
                            for q in range(L):
                                acc[q] += w0 * s0[q] + w1 * s1[q]
                        if KW % 2:
                            wv = w[oc, c, kh, KW - 1]
                            src = xf[kh * dh * Wp + (KW - 1) * dw:]
                            for q in range(L):
                                acc[q] += wv * src[q]
                for oh in range(OH):
                    dst = yp[oh]
                    src = acc[oh * Wp:]
                    for ow in range(OW):
                        dst[ow] = src[ow]
                continue
            yp[:, :] = b[oc]
            for c in range(Cg):
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[oc, c, kh, kw]
                        for oh in range(OH):
                            src = xp[c, oh * sh + kh * dh, kw * dw:]
                            dst = yp[oh]
                            for ow in range(OW):
                                dst[ow] += wv * src[ow * sw]


@njit(parallel=True, cache=True, fastmath={"contract"})
def _conv2d_backward_input_direct_cpu(gx, gy, w, sh, sw, pt, pl, dh, dw, groups, nthreads):
    # The adjoint of the forward loop; an item owns all of its sample's input gradient, so
    # its scatter into the padded plane is race-free and in a fixed order.
    N, C = gx.shape[0], gx.shape[1]
    OC, Cg, KH, KW = w.shape
    OCg = OC // groups
    OH, OW = gy.shape[2], gy.shape[3]
    H, W = gx.shape[2], gx.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    L = (OH - 1) * Wp + OW
    items = N * groups
    xbuf = np.empty((nthreads, Cg * Hp * Wp), gx.dtype)
    abuf = np.empty((nthreads, Hp * Wp), gx.dtype)
    for item in prange(items):
        th = get_thread_id()
        gxp = xbuf[th].reshape(Cg, Hp, Wp)
        wide = abuf[th, :L]
        n = item // groups
        g = item % groups
        gxp[:, :, :] = 0
        for o in range(OCg):
            oc = g * OCg + o
            if sh == 1 and sw == 1:
                _widen(wide, gy[n, oc], Wp)
                for c in range(Cg):
                    gf = gxp[c].reshape(-1)
                    for kh in range(KH):
                        for kw in range(KW):
                            wv = w[oc, c, kh, kw]
                            dst = gf[kh * dh * Wp + kw * dw:]
                            for q in range(L):
                                dst[q] += wv * wide[q]
                continue
            for c in range(Cg):
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[oc, c, kh, kw]
                        for oh in range(OH):
                            dst = gxp[c, oh * sh + kh * dh, kw * dw:]
                            src = gy[n, oc, oh]
                            for ow in range(OW):
                                dst[ow * sw] += wv * src[ow]
        hs = max(0, min(H, Hp - pt))
        ws = max(0, min(W, Wp - pl))
        for c in range(Cg):
            plane = gx[n, g * Cg + c]
            plane[:, :] = 0
            for h in range(hs):
                dst = plane[h]
                src = gxp[c, pt + h, pl:]
                for w_ in range(ws):
                    dst[w_] = src[w_]


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _conv2d_backward_weight_direct_cpu(part, gy, x, sh, sw, pt, pl, dh, dw, zero, nthreads):
    # Same chunked partials as the GEMM design.  ``reassoc`` lets the sums vectorise; the
    # compiled order is fixed, so results stay run-to-run identical.
    N, C = x.shape[0], x.shape[1]
    chunks, OC, Cg, KH, KW = part.shape
    groups = C // Cg
    OCg = OC // groups
    OH, OW = gy.shape[2], gy.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    L = (OH - 1) * Wp + OW
    xbuf = np.empty((nthreads, Cg * Hp * Wp), x.dtype)
    abuf = np.empty((nthreads, Hp * Wp), x.dtype)
    for k in prange(chunks):
        th = get_thread_id()
        xp = xbuf[th].reshape(Cg, Hp, Wp)
        wide = abuf[th, :L]
        part[k] = 0
        for n in range(k * N // chunks, (k + 1) * N // chunks):
            for g in range(groups):
                _pad_nchw(xp, x[n], g * Cg, pt, pl)
                for o in range(OCg):
                    oc = g * OCg + o
                    if sh == 1 and sw == 1:
                        _widen(wide, gy[n, oc], Wp)
                    for c in range(Cg):
                        xf = xp[c].reshape(-1)
                        for kh in range(KH):
                            for kw in range(KW):
                                acc = zero
                                if sh == 1 and sw == 1:
                                    src = xf[kh * dh * Wp + kw * dw:]
                                    for q in range(L):
                                        acc += wide[q] * src[q]
                                else:
                                    for oh in range(OH):
                                        src = xp[c, oh * sh + kh * dh, kw * dw:]
                                        gyr = gy[n, oc, oh]
                                        for ow in range(OW):
                                            acc += gyr[ow] * src[ow * sw]
                                part[k, oc, c, kh, kw] += acc


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _conv2d_backward_bias_cpu(gb, gy, zero):
    N, OC = gy.shape[0], gy.shape[1]
    P = gy.shape[2]
    for oc in prange(OC):
        acc = zero
        for n in range(N):
            row = gy[n, oc]
            for p in range(P):
                acc += row[p]
        gb[oc] = acc
