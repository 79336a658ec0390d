"""Per-leaf finite differences with Richardson extrapolation, and kink detection.

For a function F of a pytree P (a layer's forward of (params, x), or a model's loss of
params) and a cotangent dy, let φ(s) = ⟨dy, F(P + s·u)⟩ where u is a random unit direction
in **one** leaf of P (the other leaves stay put). The hand-written gradient g of that leaf is
right along u when ⟨g, u⟩ = φ'(0). φ'(0) is estimated from central differences

    D(s) = (φ(s) − φ(−s)) / (2s) = φ'(0) + φ'''(0)·s²/6 + O(s⁴)

at s = h, h/2, h/4, combined by Richardson extrapolation, R(s) = (4·D(s/2) − D(s))/3, whose
truncation error is O(s⁴); the estimate is R(h/2), from (h/2, h/4). With truncation O(h⁴) and
rounding ~eps·|φ|/h, the step h = eps^(1/5)·max(1, rms(leaf)) balances the two, so the step
can be large and rounding small. The row compares |⟨g, u⟩ − φ'(0)|/(|⟨g, u⟩| + |φ'(0)|).

Why one direction per leaf: one random direction over all leaves at once (the default of
``jax.test_util.check_grads``, tolerance ~1e-5; ``torch.autograd.gradcheck``'s fast mode,
atol 1e-5, rtol 1e-3) lets a wrong *small* leaf hide beside a big one. A bias gradient off by
0.01 % beside a 50×40 weight fed raw pixel values (0–255) moves a random directional
derivative over all leaves by ~4e-8 (at most ~2e-6 over 20 directions), while the per-leaf
row for the bias reads 5e-5.

Kinks (a non-differentiable point, like relu at exactly 0 or tied maxima of a pool) make
finite differences meaningless. Two symptoms are flagged:

- a kink *at* the point: G(s) = |φ(s) + φ(−s) − 2φ(0)|/s, the gap between the two one-sided
  slopes, is s·|φ''(0)| for a smooth φ and shrinks with s; it does not shrink at a kink, so
  G(h/4) > G(h)/2 (above the rounding level) flags one;
- a kink *within* h: the Richardson estimates from (h, h/2) and from (h/2, h/4) disagree.

The caller redraws the point when a failing row shows a kink.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jbp.check_trees import is_float, rms


def fd_rows(fj, P, names, grads, dy, rng, dtype, fd_tol):
    """Per-leaf finite differences of ⟨dy, fj(P)⟩. ``names``: one key per leaf of P;
    ``grads``: key -> manual gradient. Returns {key: (rel_fd, note, kink, why)}."""
    leaves, treedef = jax.tree.flatten(P)
    y0 = fj(P)
    y0l = [np.asarray(v, np.float64) for v in jax.tree.leaves(y0)]
    dyl = [np.asarray(v, np.float64) for v in jax.tree.leaves(dy)]
    scale = sum(float(np.sum(np.abs(d * y))) for d, y in zip(dyl, y0l, strict=True))
    eps = float(jnp.finfo(dtype).eps)
    out = {}
    for i, (n, leaf) in enumerate(zip(names, leaves, strict=True)):
        if not is_float(leaf):
            continue
        if leaf.size == 0:
            out[n] = (0.0, "empty", False, "")
            continue
        u = rng.standard_normal(leaf.shape)
        u /= np.linalg.norm(u)
        h = eps**0.2 * max(1.0, rms(leaf))  # Richardson: truncation O(h⁴), rounding eps·|φ|/h
        noise = 64 * eps * scale / h  # rounding level of one difference quotient
        fd, kink, why = fd_leaf(fj, leaves, treedef, i, u, h, dyl, y0l, noise, fd_tol)
        out[n] = _compare(grads.get(n), u, fd, noise, fd_tol) + (kink, why)
    return out


def _compare(g, u, fd, noise, fd_tol):
    """(rel_fd, note): ⟨g, u⟩ against the finite difference ``fd``."""
    if g is None:
        return float("nan"), "no usable gradient"
    a = float(np.vdot(np.asarray(g, np.float64), u))
    den = abs(a) + abs(fd)
    rel = 0.0 if den == 0 else abs(a - fd) / den
    note = ""
    if not rel < fd_tol and abs(a - fd) <= noise:
        note = "FD within rounding noise"
    return rel, note


def fd_leaf(fj, leaves, treedef, i, u, h, dyl, y0l, noise, fd_tol):
    """Directional derivative of ⟨dy, F⟩ along ``u`` for leaf ``i`` by Richardson-extrapolated
    central differences, and whether the quotients show a kink. Returns (fd, kink, why)."""
    base, dt = np.asarray(leaves[i], np.float64), leaves[i].dtype

    def outputs(s):
        lp, lm = list(leaves), list(leaves)
        lp[i], lm[i] = jnp.asarray(base + s * u, dt), jnp.asarray(base - s * u, dt)
        yp = jax.tree.leaves(fj(jax.tree.unflatten(treedef, lp)))
        ym = jax.tree.leaves(fj(jax.tree.unflatten(treedef, lm)))
        return [np.asarray(v, np.float64) for v in yp], [np.asarray(v, np.float64) for v in ym]

    D, G = {}, {}
    for s in (h, h / 2, h / 4):
        yp, ym = outputs(s)
        D[s] = sum(float(np.vdot(d, p - m)) for d, p, m in zip(dyl, yp, ym, strict=True)) / (2 * s)
        G[s] = abs(
            sum(
                float(np.vdot(d, p + m - 2 * y))
                for d, p, m, y in zip(dyl, yp, ym, y0l, strict=True)
            )
        )
        G[s] /= s  # |one-sided slope (+) − one-sided slope (−)|: s·|φ''| if smooth
    r1 = (4 * D[h / 2] - D[h]) / 3
    r2 = (4 * D[h / 4] - D[h / 2]) / 3
    fd = r2
    # a kink at the point: the slope jump does not shrink with the step
    if G[h / 4] > 0.5 * G[h] and G[h / 4] > noise and G[h / 4] > fd_tol * abs(fd):
        return fd, True, f"one-sided slopes differ by {G[h / 4]:.3g} at steps h and h/4"
    # a kink within h: the two Richardson estimates disagree
    if abs(r1 - r2) > 0.1 * fd_tol * (abs(r1) + abs(r2)) + noise:
        return fd, True, f"Richardson estimates {r1:.6g} (h, h/2) and {r2:.6g} (h/2, h/4)"
    return fd, False, ""
