"""CUDA kernels for 2-D convolution; the contract, validation and dispatch are in kernels/conv.py.

One thread per output element in every pass (gather form): the forward and the input
gradient put consecutive threads on consecutive ``ow`` / ``w`` so loads and stores coalesce;
the weight gradient gives each weight element one thread that sums over ``(n, oh, ow)``.
No atomics, no shared state, so results are deterministic.  ``zero`` is a scalar of the
arrays' dtype, so accumulators keep that dtype (float32 stays float32 on the GPU).
"""
from __future__ import annotations

from numba import cuda


@cuda.jit(cache=True)
def _conv2d_forward_cuda(y, x, w, b, sh, sw, pt, pl, dh, dw, groups):
    i = cuda.grid(1)
    if i < y.size:
        N, OC, OH, OW = y.shape
        H, W = x.shape[2], x.shape[3]
        Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
        ow = i % OW
        oh = (i // OW) % OH
        oc = (i // (OW * OH)) % OC
        n = i // (OW * OH * OC)
        c0 = (oc // (OC // groups)) * Cg
        acc = b[oc]
        for c in range(Cg):
            for kh in range(KH):
                ih = oh * sh - pt + kh * dh
                if ih >= 0 and ih < H:
                    for kw in range(KW):
                        iw = ow * sw - pl + kw * dw
                        if iw >= 0 and iw < W:
                            acc += w[oc, c, kh, kw] * x[n, c0 + c, ih, iw]
        y[n, oc, oh, ow] = acc


@cuda.jit(cache=True)
def _conv2d_backward_input_cuda(gx, gy, w, sh, sw, pt, pl, dh, dw, groups, zero):
    i = cuda.grid(1)
    if i < gx.size:
        N, C, H, W = gx.shape
        OH, OW = gy.shape[2], gy.shape[3]
        OC, Cg, KH, KW = w.shape
        OCg = OC // groups
        iw = i % W
        ih = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
        g = c // Cg
        cl = c - g * Cg
        acc = zero
        for o in range(OCg):
            oc = g * OCg + o
            for kh in range(KH):
                th = ih + pt - kh * dh
                if th >= 0 and th % sh == 0 and th // sh < OH:
                    oh = th // sh
                    for kw in range(KW):
                        tw = iw + pl - kw * dw
                        if tw >= 0 and tw % sw == 0 and tw // sw < OW:
                            acc += w[oc, cl, kh, kw] * gy[n, oc, oh, tw // sw]
        gx[n, c, ih, iw] = acc


@cuda.jit(cache=True)
def _conv2d_backward_weight_cuda(gw, gy, x, sh, sw, pt, pl, dh, dw, groups, zero):
    i = cuda.grid(1)
    if i < gw.size:
        OC, Cg, KH, KW = gw.shape
        N, OH, OW = gy.shape[0], gy.shape[2], gy.shape[3]
        H, W = x.shape[2], x.shape[3]
        kw = i % KW
        kh = (i // KW) % KH
        cl = (i // (KW * KH)) % Cg
        oc = i // (KW * KH * Cg)
        c = (oc // (OC // groups)) * Cg + cl
        acc = zero
        for n in range(N):
            for oh in range(OH):
                ih = oh * sh - pt + kh * dh
                if ih >= 0 and ih < H:
                    for ow in range(OW):
                        iw = ow * sw - pl + kw * dw
                        if iw >= 0 and iw < W:
                            acc += gy[n, oc, oh, ow] * x[n, c, ih, iw]
        gw[oc, cl, kh, kw] = acc


@cuda.jit(cache=True)
def _conv2d_backward_bias_cuda(gb, gy, zero):
    oc = cuda.grid(1)
    if oc < gb.size:
        acc = zero
        for n in range(gy.shape[0]):
            for p in range(gy.shape[2]):
                acc += gy[n, oc, p]
        gb[oc] = acc
