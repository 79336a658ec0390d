"""Winograd's minimal filtering F(2×2, 3×3): a 3×3, stride-1 convolution with 2.25× fewer
multiplications, forward and backward written out.

**1-D.** Two outputs of a 3-tap correlation, yᵢ = Σᵣ dᵢ₊ᵣ·gᵣ (i = 0, 1; r = 0, 1, 2) of a
4-sample input tile d, take four products instead of six::

    y = Aᵀ[(G·g) ⊙ (Bᵀ·d)]       Bᵀ = [1  0 −1  0]    G = [ 1   0   0 ]    Aᵀ = [1 1  1  0]
                                      [0  1  1  0]        [1/2 1/2 1/2]         [0 1 −1 −1]
                                      [0 −1  1  0]        [1/2 −1/2 1/2]
                                      [0  1  0 −1]        [ 0   0   1 ]

**2-D, with channels.** Nesting it over rows and columns, a 2×2 output tile of the 4×4 input
tile d (tiles overlap by 2, the stride of the outputs) is Y = Aᵀ M A, with, for each of the
16 positions k = (i, j) of the 4×4 transformed tile, one matrix product over the channels::

    V_k = (Bᵀ d B)_k           (tiles, c_in)        the input transform
    U_k = (G g Gᵀ)_k           (c_in, c_out)        the kernel transform
    M_k = V_k · U_k            (tiles, c_out)       16 matmuls of 1/2.25 the patches' FLOPs

**Backward.** Everything above is linear, so the backward is its transpose. With the
output gradient cut into the same 2×2 tiles, Z = A dY Aᵀ (4×4 per tile), and::

    dU_k = V_kᵀ · Z_k,   dW = Gᵀ dU G          (the BP4 of each of the 16 products)
    dV_k = Z_k · U_kᵀ,   dd = B dV Bᵀ          (BP2), and each tile's dd goes back to the
                                               4×4 input rows and columns it came from,
                                               overlapping tiles adding up (col2im)

Padding works as for patches: the input is padded, the output cropped; tiles that run past
an odd-sized output read zero padding and their extra outputs are cut off.

Reference: A. Lavin and S. Gray, "Fast Algorithms for Convolutional Neural Networks",
CVPR 2016 (section 4 and its F(2×2, 3×3) matrices).
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])


def combine(matrix, parts):
    """[Σⱼ matrix[i, j]·parts[j] for each row i]: a small constant matrix applied to a list
    of arrays (zero terms skipped, ±1 as adds), which XLA fuses into one loop."""
    out = []
    for row in matrix:
        acc = None
        for c, part in zip(row, parts, strict=True):
            if c == 0:
                continue
            term = part if c == 1 else -part if c == -1 else part * np.asarray(c, part.dtype)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out


def tiles(pads, hw):
    """(tile rows, tile columns) of 2×2 outputs for an (h, w) input with explicit pads."""
    return tuple((n + lo + hi - 1) // 2 for n, (lo, hi) in zip(hw, pads, strict=True))


def input_transform(x, pads):
    """V: the 16 arrays (n·th·tw, c) of Bᵀ d B, one per position of the 4×4 tile."""
    n, h, w, c = x.shape
    (pt, _), (pl, _) = pads
    th, tw = tiles(pads, (h, w))
    cfg = ((0, 0, 0), (pt, 2 * th + 2 - h - pt, 0), (pl, 2 * tw + 2 - w - pl, 0), (0, 0, 0))
    xp = lax.pad(x, jnp.zeros((), x.dtype), cfg)
    rows = [lax.slice_in_dim(xp, r, r + 2 * th - 1, 2, axis=1) for r in range(4)]
    out = []
    for row in combine(BT, rows):
        cols = [lax.slice_in_dim(row, s, s + 2 * tw - 1, 2, axis=2) for s in range(4)]
        out += [v.reshape(-1, c) for v in combine(BT, cols)]
    return out


def kernel_transform(w):
    """U: the 16 matrices (c_in, c_out) of G g Gᵀ."""
    g = G.astype(w.dtype)
    u = jnp.einsum("ki,ijcf,lj->klcf", g, w, g)
    return [u[i, j] for i in range(4) for j in range(4)]


def output_transform(m, n, th, tw):
    """Y = Aᵀ M A per tile, the 2×2 tiles laid out as an (n, 2·th, 2·tw, c_out) image."""
    f = m[0].shape[-1]
    m = [v.reshape(n, th, tw, f) for v in m]
    rows = [
        combine(AT[p : p + 1], [m[4 * i + j] for i in range(4)])[0]
        for p in range(2)
        for j in range(4)
    ]
    y = [combine(AT, rows[4 * p : 4 * p + 4]) for p in range(2)]  # y[p][q]: output (p, q)
    y = jnp.stack([jnp.stack(yp, axis=3) for yp in y], axis=2)  # (n, th, 2, tw, 2, f)
    return y.reshape(n, 2 * th, 2 * tw, f)


def gradient_transform(dy, th, tw):
    """Z: the 16 arrays (n·th·tw, c_out) of A dY Aᵀ, dY padded to whole tiles."""
    n, h, w, f = dy.shape
    dy = jnp.pad(dy, ((0, 0), (0, 2 * th - h), (0, 2 * tw - w), (0, 0)))
    e = dy.reshape(n, th, 2, tw, 2, f)
    out = []
    for row in combine(AT.T, [e[:, :, p] for p in range(2)]):
        out += [v.reshape(-1, f) for v in combine(AT.T, [row[:, :, :, q] for q in range(2)])]
    return out


def input_gradient(dv, pads, x_shape):
    """dX: B dV Bᵀ per tile, put back at the 4×4 input positions each tile was read from
    (tiles overlap by 2 rows and columns; overlaps add up), padding cropped."""
    n, h, w, c = x_shape
    (pt, _), (pl, _) = pads
    th, tw = tiles(pads, (h, w))
    dv = [v.reshape(n, th, tw, c) for v in dv]
    zero = jnp.zeros((), dv[0].dtype)

    def overlap_add(parts, axis, size):  # Σₛ part s at positions s + 2·t along axis
        cfg = [(0, 0, 0)] * 4
        total = None
        for s, part in enumerate(parts):
            cfg[axis] = (s, size - s - 2 * part.shape[axis] + 1, 1)
            placed = lax.pad(part, zero, cfg)
            total = placed if total is None else total + placed
        return total

    cols = []
    for i in range(4):  # rows of the tile: B applied over its columns, put back along w
        row = combine(BT.T, [dv[4 * i + j] for j in range(4)])
        cols.append(overlap_add(row, 2, 2 * tw + 2))
    dxp = overlap_add(combine(BT.T, cols), 1, 2 * th + 2)
    return dxp[:, pt : pt + h, pl : pl + w]


def conv(x, w, pads):
    """(Y, V): Y = X ⋆ W (no bias) for a 3×3 kernel at stride 1 and explicit ``pads``, and
    the transformed input V (16 arrays), which the backward needs."""
    n, h, wd, _ = x.shape
    th, tw = tiles(pads, (h, wd))
    v = input_transform(x, pads)
    m = [jnp.dot(vk, uk) for vk, uk in zip(v, kernel_transform(w), strict=True)]
    ho, wo = h + sum(pads[0]) - 2, wd + sum(pads[1]) - 2
    return output_transform(m, n, th, tw)[:, :ho, :wo], v


def conv_backward(v, w, dy, pads, x_shape):
    """(dW, dX) from the forward's V and the output gradient dY (module docstring)."""
    th, tw = tiles(pads, x_shape[1:3])
    z = gradient_transform(dy, th, tw)
    du = jnp.stack([jnp.dot(vk.T, zk) for vk, zk in zip(v, z, strict=True)])
    g = G.astype(w.dtype)
    dw = jnp.einsum("ki,klcf,lj->ijcf", g, du.reshape(4, 4, *du.shape[1:]), g)
    dv = [jnp.dot(zk, uk.T) for zk, uk in zip(z, kernel_transform(w), strict=True)]
    return dw, input_gradient(dv, pads, x_shape)
