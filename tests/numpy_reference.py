"""An independent float64 numpy reference for the group ops and the convolutions.

Group elements are 2x2 integer matrices acting on centred pixel coordinates,
images are transformed by explicit coordinate look-ups, and composition is
matrix multiplication, so nothing here shares code with ``deepsea``.
"""

from __future__ import annotations

import numpy as np

ROT = np.array([[0, -1], [1, 0]])  # counter-clockwise quarter turn, as np.rot90 draws it
MIRROR = np.array([[1, 0], [0, -1]])  # reverses the width axis

# The order fixed by the specification: the 4 rotations, then the 4 rotations of the mirrored input.
MATRICES = {
    "c4": [np.linalg.matrix_power(ROT, k) for k in range(4)],
    "d4": [np.linalg.matrix_power(ROT, k) @ np.linalg.matrix_power(MIRROR, f) for f in range(2) for k in range(4)],
}


def index_of(name: str, m: np.ndarray) -> int:
    hits = [i for i, e in enumerate(MATRICES[name]) if np.array_equal(e, m)]
    assert len(hits) == 1, m
    return hits[0]


def selection_matrix(ref, in_shape: tuple[int, ...]) -> np.ndarray:
    """The matrix of a reference op that copies input elements (slices and rolls): one call on the elements'
    indices names each output's source, after a call on ones shows every output is a single copy (no sums, no
    zero fill).  The same matrix as column j = ref(e_j), in two calls instead of one per element."""
    n = int(np.prod(in_shape))
    ones = np.ravel(ref(np.ones(in_shape)))
    np.testing.assert_array_equal(ones, np.ones_like(ones))
    source = np.ravel(ref(np.arange(n, dtype=np.float64).reshape(in_shape))).astype(int)
    m = np.zeros((source.size, n))
    m[np.arange(source.size), source] = 1.0
    return m


def apply(m: np.ndarray, img: np.ndarray) -> np.ndarray:
    """``out[p] = img[m^-1 p]`` in coordinates centred on the middle of the (square) grid."""
    n = img.shape[0]
    assert img.shape[1] == n
    c = (n - 1) / 2
    minv = np.rint(np.linalg.inv(m)).astype(int)
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    src = np.einsum("ab,bij->aij", minv, np.stack([i - c, j - c]))
    si, sj = np.rint(src + c).astype(int)
    return img[si, sj]


def slice_ref(x: np.ndarray, name: str) -> np.ndarray:
    b = x.shape[0]
    out = np.zeros((len(MATRICES[name]) * b, *x.shape[1:]), np.float64)
    for v, m in enumerate(MATRICES[name]):
        for i in range(b):
            out[v * b + i] = apply(m, x[i])
    return out


def roll_ref(x: np.ndarray, name: str, conv: bool) -> np.ndarray:
    mats = MATRICES[name]
    nv = len(mats)
    b, c = x.shape[0] // nv, x.shape[-1]
    out = np.zeros((*x.shape[:-1], nv * c), np.float64)
    for g, mg in enumerate(mats):
        for h, mh in enumerate(mats):
            src = index_of(name, mh @ mg)
            for i in range(b):
                maps = x[src * b + i]
                if conv:
                    maps = apply(np.rint(np.linalg.inv(mh)).astype(int), maps)
                out[g * b + i, ..., h * c : (h + 1) * c] = maps
    return out


def pool_ref(x: np.ndarray, name: str, mode: str, eps: float = 1e-12) -> np.ndarray:
    nv = len(MATRICES[name])
    y = np.asarray(x, np.float64).reshape((nv, x.shape[0] // nv, *x.shape[1:]))
    if mode == "mean":
        return y.mean(0)
    if mode == "max":
        return y.max(0)
    return np.sqrt((y**2).mean(0) + eps)


def pool_grad_ref(x: np.ndarray, ct: np.ndarray, name: str, mode: str, eps: float = 1e-12) -> np.ndarray:
    """The gradient of ``sum(pool(x) * ct)`` with respect to ``x``, derived by hand."""
    nv = len(MATRICES[name])
    y = np.asarray(x, np.float64).reshape((nv, x.shape[0] // nv, *x.shape[1:]))
    if mode == "mean":
        g = np.broadcast_to(ct / nv, y.shape)
    elif mode == "max":
        g = (y == y.max(0, keepdims=True)) * ct
    else:
        rms = np.sqrt((y**2).mean(0) + eps)
        g = y / (nv * rms) * ct
    return np.asarray(g).reshape(x.shape)


def _pads(padding, size, kernel):
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding == "SAME":
        return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel)
    return padding


def conv_ref(x, w, padding):
    """float64 'cross-correlation' NHWC x HWIO, stride 1, and its input and kernel gradients for ``g``."""
    (pt, pb), (pl, pr) = _pads(padding, x.shape[1:3], w.shape[:2])
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw = w.shape[:2]
    h, wd = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    w = np.asarray(w, np.float64)
    y = sum(xp[:, i : i + h, j : j + wd, :] @ w[i, j] for i in range(kh) for j in range(kw))

    def grads(g):
        g = np.asarray(g, np.float64)
        dxp = np.zeros_like(xp)
        dw = np.zeros_like(w)
        for i in range(kh):
            for j in range(kw):
                dxp[:, i : i + h, j : j + wd, :] += g @ w[i, j].T
                dw[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i : i + h, j : j + wd, :], g)
        return dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :], dw

    return y, grads


def max_pool_ref(x, window, stride, pads):
    """float64 max pooling over ``window x window`` windows every ``stride`` pixels, padded cells never winning, and
    its gradient for ``g``, which goes to each window's first maximum in row-major order."""
    (pt, pb), (pl, pr) = pads
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
    ho, wo = (xp.shape[1] - window) // stride + 1, (xp.shape[2] - window) // stride + 1
    n, c = x.shape[0], x.shape[3]
    y = np.empty((n, ho, wo, c))
    arg = np.empty((n, ho, wo, c), np.int64)
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride : i * stride + window, j * stride : j * stride + window, :].reshape(n, -1, c)
            arg[:, i, j] = win.argmax(1)  # the first maximum
            y[:, i, j] = win.max(1)

    def grad(g):
        dxp = np.zeros_like(xp)
        for i in range(ho):
            for j in range(wo):
                a, b = np.divmod(arg[:, i, j], window)
                nn_, cc = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")
                np.add.at(dxp, (nn_, i * stride + a, j * stride + b, cc), np.asarray(g, np.float64)[:, i, j])
        return dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]

    return y, grad
