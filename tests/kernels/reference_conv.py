"""Slow, obvious NumPy references for conv2d and conv_transpose2d (tests only).

Both are written from the definitions, one output (or one input) element at a time, in
float64, with padding as explicit zeros: no im2col, no reuse of the kernels' index tricks.
"""
import numpy as np


def same_padding(kh, kw, dilation):
    """torch's padding='same': (top, bottom, left, right), the odd extra at bottom/right."""
    dh, dw = dilation
    eh, ew = dh * (kh - 1), dw * (kw - 1)
    return eh // 2, eh - eh // 2, ew // 2, ew - ew // 2


def conv2d_reference(x, w, b=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
                     groups=1):
    """y[n, oc, oh, ow] = b[oc] + sum over (c, kh, kw) of w * x_padded, element by element.

    ``padding`` is (top, bottom, left, right).  Returns float64.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    OC, Cg, KH, KW = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = padding
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xp[:, :, pt:pt + H, pl:pl + W] = x
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    OCg = OC // groups
    y = np.zeros((N, OC, OH, OW))
    for n in range(N):
        for oc in range(OC):
            g = oc // OCg
            for oh in range(OH):
                for ow in range(OW):
                    total = 0.0 if b is None else float(b[oc])
                    for c in range(Cg):
                        for kh in range(KH):
                            for kw in range(KW):
                                total += (w[oc, c, kh, kw] *
                                          xp[n, g * Cg + c, oh * sh + kh * dh, ow * sw + kw * dw])
                    y[n, oc, oh, ow] = total
    return y


def conv_transpose2d_reference(x, w, b=None, stride=(1, 1), padding=(0, 0),
                               output_padding=(0, 0), groups=1, dilation=(1, 1)):
    """The scatter definition: every x[n, c, h, w_] adds x * w[c, o, kh, kw] into
    y[n, g*OCg + o, h*sh - ph + kh*dh, w_*sw - pw + kw*dw] (dropped when outside y).

    Returns float64.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    N, C, H, W = x.shape
    _, OCg, KH, KW = w.shape
    sh, sw = stride
    ph, pw = padding
    oph, opw = output_padding
    dh, dw = dilation
    HO = (H - 1) * sh - 2 * ph + dh * (KH - 1) + oph + 1
    WO = (W - 1) * sw - 2 * pw + dw * (KW - 1) + opw + 1
    Cg = C // groups
    y = np.zeros((N, OCg * groups, HO, WO))
    for n in range(N):
        for c in range(C):
            g = c // Cg
            for h in range(H):
                for w_ in range(W):
                    for o in range(OCg):
                        for kh in range(KH):
                            for kw in range(KW):
                                oh = h * sh - ph + kh * dh
                                ow = w_ * sw - pw + kw * dw
                                if 0 <= oh < HO and 0 <= ow < WO:
                                    y[n, g * OCg + o, oh, ow] += x[n, c, h, w_] * w[c, o, kh, kw]
    if b is not None:
        y += np.asarray(b, dtype=np.float64).reshape(1, -1, 1, 1)
    return y
