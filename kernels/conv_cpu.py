"""CPU loops for 2-D convolution; the contract, validation and dispatch are in kernels/conv.py.

Two designs, picked per shape class by ``kernels.conv``:

* GEMM (big layers).  Work is split into items of (sample, group, band of output rows);
  each thread copies the input rows its band needs into a zero-padded NHWC buffer, expands
  them into patch-major columns ``cols[p, (kh, kw, c)]`` (a whole ``kw`` run of channels is
  one contiguous copy) and calls ``np.dot``, which Numba sends to SciPy's BLAS, kept
  single-threaded by ``kernels.threads`` so that the only thread pool is Numba's.  The
  product is ``cols (T, K) @ w2 (K, OCg)``: of the four layouts of this GEMM it is the one
  OpenBLAS runs fastest here (15% over NCHW-order columns).  Workspaces are per thread and
  bounded by the band size, never by the batch.
* direct (small layers: LeNet, depthwise).  Plain loops over a padded NCHW plane, whose
  innermost loop runs along an output row.

Weights for the GEMM design are ``w2 (groups, OCg, KH*KW*Cg)`` in ``(kh, kw, c)`` order.
Index arithmetic stays in non-negative loop counters over pre-sliced views: Numba adds
wrap-around code to (and stops vectorising) any index it cannot prove non-negative.

Every output element is written by exactly one item, and an item's arithmetic does not
depend on the thread that runs it, so results do not depend on the thread count.  The
weight gradient sums per-chunk partials whose chunks are fixed by the batch size alone.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


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
    Hb, Wp, Cg = xp.shape
    xp2 = xp.reshape(Hb, Wp * Cg)
    run = KW * Cg
    for t in range(cols.shape[0]):
        i = t // OW
        ow = t - i * OW
        row = cols[t]
        for kh in range(KH):
            src = xp2[i * sh + kh * dh, ow * sw * Cg:]
            dst = row[kh * run:]
            if dw == 1:
                for j in range(run):
                    dst[j] = src[j]
            else:
                for kw in range(KW):
                    s = src[kw * dw * Cg:]
                    d = dst[kw * Cg:]
                    for c in range(Cg):
                        d[c] = s[c]


@njit(cache=True)
def _col2im_add(gxp, gcols, oh0, OW, KH, KW, sh, sw, dh, dw):
    """The adjoint of ``_im2col`` into a whole padded sample: ``gxp += scatter(gcols)``."""
    Hp, Wp, Cg = gxp.shape
    gxp2 = gxp.reshape(Hp, Wp * Cg)
    run = KW * Cg
    for t in range(gcols.shape[0]):
        i = t // OW
        ow = t - i * OW
        row = gcols[t]
        for kh in range(KH):
            dst = gxp2[(oh0 + i) * sh + kh * dh, ow * sw * Cg:]
            src = row[kh * run:]
            if dw == 1:
                for j in range(run):
                    dst[j] += src[j]
            else:
                for kw in range(KW):
                    d = dst[kw * dw * Cg:]
                    s = src[kw * Cg:]
                    for c in range(Cg):
                        d[c] += s[c]


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
    for th in prange(nthreads):
        for item in range(th * items // nthreads, (th + 1) * items // nthreads):
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
    for th in prange(nthreads):
        gxp = xbuf[th].reshape(Hp, Wp, Cg)
        for item in range(th * items // nthreads, (th + 1) * items // nthreads):
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
    for th in prange(nthreads):
        tmp = tbuf[th].reshape(OCg, K)
        for k in range(th * chunks // nthreads, (th + 1) * chunks // nthreads):
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


@njit(parallel=True, cache=True)
def _conv2d_forward_direct_cpu(y, x, w, b, sh, sw, pt, pl, dh, dw, groups, nthreads):
    N, C = x.shape[0], x.shape[1]
    OC, Cg, KH, KW = w.shape
    OCg = OC // groups
    OH, OW = y.shape[2], y.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    items = N * groups
    xbuf = np.empty((nthreads, Cg * Hp * Wp), x.dtype)
    for th in prange(nthreads):
        xp = xbuf[th].reshape(Cg, Hp, Wp)
        for item in range(th * items // nthreads, (th + 1) * items // nthreads):
            n = item // groups
            g = item % groups
            _pad_nchw(xp, x[n], g * Cg, pt, pl)
            for o in range(OCg):
                oc = g * OCg + o
                yp = y[n, oc]
                yp[:, :] = b[oc]
                for c in range(Cg):
                    for kh in range(KH):
                        for kw in range(KW):
                            wv = w[oc, c, kh, kw]
                            for oh in range(OH):
                                src = xp[c, oh * sh + kh * dh, kw * dw:]
                                dst = yp[oh]
                                if sw == 1:
                                    for ow in range(OW):
                                        dst[ow] += wv * src[ow]
                                else:
                                    for ow in range(OW):
                                        dst[ow] += wv * src[ow * sw]


@njit(parallel=True, cache=True)
def _conv2d_backward_input_direct_cpu(gx, gy, w, sh, sw, pt, pl, dh, dw, groups, nthreads):
    # The adjoint of the forward loop; an item owns all of its sample's input gradient, so
    # its scatter into the padded plane is race-free and in a fixed order.
    N, C = gx.shape[0], gx.shape[1]
    OC, Cg, KH, KW = w.shape
    OCg = OC // groups
    OH, OW = gy.shape[2], gy.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    items = N * groups
    xbuf = np.empty((nthreads, Cg * Hp * Wp), gx.dtype)
    for th in prange(nthreads):
        gxp = xbuf[th].reshape(Cg, Hp, Wp)
        for item in range(th * items // nthreads, (th + 1) * items // nthreads):
            n = item // groups
            g = item % groups
            gxp[:, :, :] = 0
            for o in range(OCg):
                oc = g * OCg + o
                gyp = gy[n, oc]
                for c in range(Cg):
                    for kh in range(KH):
                        for kw in range(KW):
                            wv = w[oc, c, kh, kw]
                            for oh in range(OH):
                                dst = gxp[c, oh * sh + kh * dh, kw * dw:]
                                src = gyp[oh]
                                if sw == 1:
                                    for ow in range(OW):
                                        dst[ow] += wv * src[ow]
                                else:
                                    for ow in range(OW):
                                        dst[ow * sw] += wv * src[ow]
            H, W = gx.shape[2], gx.shape[3]
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
def _conv2d_backward_weight_direct_cpu(part, gy, x, sh, sw, pt, pl, dh, dw, nthreads):
    # Same chunked partials as the GEMM design.  ``reassoc`` lets the row sums vectorise;
    # the compiled order is fixed, so results stay run-to-run identical.
    N, C = x.shape[0], x.shape[1]
    chunks, OC, Cg, KH, KW = part.shape
    groups = C // Cg
    OCg = OC // groups
    OH, OW = gy.shape[2], gy.shape[3]
    Hp = (OH - 1) * sh + (KH - 1) * dh + 1
    Wp = (OW - 1) * sw + (KW - 1) * dw + 1
    xbuf = np.empty((nthreads, Cg * Hp * Wp), x.dtype)
    for th in prange(nthreads):
        xp = xbuf[th].reshape(Cg, Hp, Wp)
        for k in range(th * chunks // nthreads, (th + 1) * chunks // nthreads):
            part[k] = 0
            for n in range(k * N // chunks, (k + 1) * N // chunks):
                for g in range(groups):
                    _pad_nchw(xp, x[n], g * Cg, pt, pl)
                    for o in range(OCg):
                        oc = g * OCg + o
                        gyp = gy[n, oc]
                        for c in range(Cg):
                            for kh in range(KH):
                                for kw in range(KW):
                                    acc = 0.0
                                    for oh in range(OH):
                                        src = xp[c, oh * sh + kh * dh, kw * dw:]
                                        gyr = gyp[oh]
                                        if sw == 1:
                                            for ow in range(OW):
                                                acc += gyr[ow] * src[ow]
                                        else:
                                            for ow in range(OW):
                                                acc += gyr[ow] * src[ow * sw]
                                    part[k, oc, c, kh, kw] += acc


@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _conv2d_backward_bias_cpu(gb, gy):
    N, OC = gy.shape[0], gy.shape[1]
    P = gy.shape[2]
    for oc in prange(OC):
        acc = 0.0
        for n in range(N):
            row = gy[n, oc]
            for p in range(P):
                acc += row[p]
        gb[oc] = acc
