"""Whole-layer properties of a hand-written backward, checked at one point (p, x).

``layer_checks`` returns ``{name: Check(ok, detail)}`` in this order:

- ``structure``: dparams and dx have the tree structure, shapes and dtypes of params and x
  (the message names the leaf; a wrong leaf fails the report instead of crashing in a
  comparison);
- ``forward_shape``: y has the batch axis plus the ``out_shape`` that ``init`` announced;
- ``stochastic_flag``: a layer with ``stochastic = False`` gives the same y for another key
  (combinators and the training step need not hand a key to a layer that says it needs none);
- ``linear_in_dy``: backward(a·dy₁ + b·dy₂) = a·backward(dy₁) + b·backward(dy₂) with
  a + b ≠ 1 (< ``autodiff_tol``): a backward that ignores dy or adds a constant is not a VJP;
- ``zero_dy``: dy = 0 gives exactly 0 in every leaf;
- ``deterministic``: two eager calls of the backward, and two calls of the jitted
  forward+backward (what a training step runs), give identical bits;
- ``eager_vs_jit``: the eager backward ≈ the jitted forward+backward (< ``impl_tol``);
- ``vmap_vs_loop``: ``jax.vmap`` of the backward over a stack of cotangents = a Python loop
  (< ``impl_tol``), so per-example gradients by vmap can be trusted;
- ``batch_independent`` (layers with ``batch_coupled = False``, not stochastic): the batch
  backward = the sum of one-example backwards for dparams and their concatenation for dx
  (< ``autodiff_tol``); a coupled layer (BatchNorm) must say so, or masking and per-example
  gradients break.

A check that raises fails with the exception's name; when the backward's output does not
match params/x the checks from ``linear_in_dy`` on are not run (``ok=None``).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jbp.check_report import Check
from jbp.check_trees import (
    ZERO_ULPS,
    identical,
    is_float,
    leaf_diff,
    like,
    named,
    param_name,
    shape_leaves,
    shape_tree,
    short,
    structure_problems,
    take,
    to_numpy,
    worst_leaf,
    x_name,
)

_SKIPPED_ON_BAD_STRUCTURE = (
    "linear_in_dy",
    "zero_dy",
    "deterministic",
    "eager_vs_jit",
    "vmap_vs_loop",
    "batch_independent",
)


def guard(fn):
    """Run one check; an exception becomes a failing check naming it."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a broken backward must not crash the report
        return Check(False, f"raised {type(e).__name__}: {short(str(e))}")


def layer_checks(layer, fns, pt, out_shape, autodiff_tol, impl_tol):
    """The whole-layer checks at the point ``pt`` (a :class:`LayerPoint`); ``fns``: the
    layer's jitted functions (:class:`LayerFns`)."""
    if pt.bwds is None:
        return {"structure": Check(False, f"backward {pt.error}")}
    problems = structure_problems(pt.bwds[0][0], pt.p, param_name, "dparams")
    problems += structure_problems(pt.bwds[0][1], pt.x, x_name, "dx")
    checks = {
        "structure": Check(
            not problems,
            "; ".join(problems) or "dparams and dx match params and x (structure, shape, dtype)",
        ),
        "forward_shape": guard(lambda: forward_shape(pt.y, out_shape, pt.x)),
        "stochastic_flag": guard(lambda: stochastic_flag(layer, fns, pt.p, pt.x)),
    }
    if problems:
        for n in _SKIPPED_ON_BAD_STRUCTURE:
            checks[n] = Check(None, "not run: the backward's output does not match params/x")
        return checks
    at = _AtPoint(layer, fns, pt)
    checks["linear_in_dy"] = guard(lambda: linear_in_dy(at, autodiff_tol))
    checks["zero_dy"] = guard(lambda: zero_dy(at))
    checks["deterministic"] = guard(lambda: deterministic(at))
    checks["eager_vs_jit"] = guard(lambda: eager_vs_jit(at, impl_tol))
    checks["vmap_vs_loop"] = guard(lambda: vmap_vs_loop(at, impl_tol))
    checks["batch_independent"] = guard(lambda: batch_independent(at, autodiff_tol))
    return checks


class _AtPoint:
    """The backward at the checked point. Gradients are compared flattened by :meth:`flat`
    to ``{("p" or "x", leaf name): array}``; ``names`` lists the floating leaves."""

    def __init__(self, layer, fns, pt):
        self.layer, self.fns = layer, fns
        self.p, self.x, self.cache, self.dys, self.bwds = pt.p, pt.x, pt.cache, pt.dys, pt.bwds
        self.scale = pt.scale
        self.names = [("p", n) for n, v in named(pt.p, param_name) if is_float(v)]
        self.names += [("x", n) for n, v in named(pt.x, x_name) if is_float(v)]

    def diff(self, a, b):
        """Two gradients of one leaf compared (:func:`leaf_diff`: zero to rounding is 0)."""
        return leaf_diff(a, b, self.scale)

    def bwd(self, dy):
        """The eager backward for cotangent ``dy``."""
        return self.layer.backward(self.p, self.cache, dy)

    @staticmethod
    def flat(b):
        d = {("p", n): v for n, v in named(b[0], param_name, none_leaf=True)}
        d.update({("x", n): v for n, v in named(b[1], x_name, none_leaf=True)})
        return d


def _where(n):
    return f" ({n[1]})" if n else ""


def linear_in_dy(at, tol):
    """backward(a·dy₁ + b·dy₂) against a·backward(dy₁) + b·backward(dy₂)."""
    dys = at.dys
    dy1 = dys[0]
    dy2 = dys[1] if len(dys) > 1 else jax.tree.map(lambda v: like(0.5 - np.asarray(v), v), dy1)
    a, b = 1.7, -0.6  # a + b ≠ 1: a constant term in the backward shows too
    mix = jax.tree.map(lambda u, v: like(a * np.asarray(u) + b * np.asarray(v), u), dy1, dy2)
    lhs = at.flat(at.bwd(mix))
    g1, g2 = at.flat(at.bwds[0]), at.flat(at.bwds[1] if len(dys) > 1 else at.bwd(dy2))
    worst, wn = 0.0, None
    for n in at.names:
        l1, r1, r2 = (np.asarray(t[n], np.float64) for t in (lhs, g1, g2))
        num = np.linalg.norm(l1 - (a * r1 + b * r2))
        den = np.linalg.norm(l1) + abs(a) * np.linalg.norm(r1) + abs(b) * np.linalg.norm(r2)
        floor = ZERO_ULPS * np.finfo(np.asarray(lhs[n]).dtype).eps * at.scale
        v = 0.0 if den <= floor else float(num / den)  # all three zero to rounding: equal
        if not v <= worst:
            worst, wn = v, n
    return Check(
        worst < tol,
        f"backward(a·dy1 + b·dy2) vs a·backward(dy1) + b·backward(dy2): {worst:.3e}" + _where(wn),
    )


def zero_dy(at):
    """dy = 0 must give exactly 0 in every leaf."""
    z = at.flat(at.bwd(jax.tree.map(lambda v: jnp.asarray(np.zeros(v.shape, v.dtype)), at.dys[0])))
    bad = [n for n in at.names if not np.all(np.asarray(z[n]) == 0)]
    if bad:
        m = float(np.nanmax(np.abs(np.asarray(z[bad[0]], np.float64))))
        return Check(
            False,
            f"dy = 0 gives nonzero gradients in {', '.join(n[1] for n in bad)} "
            f"(max |{bad[0][1]}| = {m:.3g})",
        )
    return Check(True, "dy = 0 gives exactly 0 in every leaf")


def deterministic(at):
    """Two eager backwards, and two jitted forward+backwards, give identical bits."""
    p, x, dy = at.p, at.x, at.dys[0]
    e1, e2 = at.flat(at.bwds[0]), at.flat(at.bwd(dy))
    j1, j2 = at.flat(at.fns.fwd_bwd(p, x, dy)), at.flat(at.fns.fwd_bwd(p, x, dy))
    bad_e = [n[1] for n in at.names if not identical(e1[n], e2[n])]
    bad_j = [n[1] for n in at.names if not identical(j1[n], j2[n])]
    parts = [f"two eager calls differ in {', '.join(bad_e)}"] if bad_e else []
    parts += [f"two jitted calls differ in {', '.join(bad_j)}"] if bad_j else []
    if parts:
        return Check(False, "; ".join(parts))
    return Check(True, "two eager and two jitted calls give identical bits")


def eager_vs_jit(at, tol):
    """The eager backward against the jitted forward+backward."""
    e, j = at.flat(at.bwds[0]), at.flat(at.fns.fwd_bwd(at.p, at.x, at.dys[0]))
    worst, wn = worst_leaf(at.diff, e, j, at.names)
    return Check(worst < tol, f"forward+backward jitted vs eager: {worst:.3e}" + _where(wn))


def vmap_vs_loop(at, tol):
    """``jax.vmap`` of the backward over the stacked cotangents against one call per dy."""
    dys = at.dys
    stacked = jax.tree.map(lambda *v: jnp.asarray(np.stack(v)), *dys)
    vb = to_numpy(at.fns.vmap_bwd(at.p, at.cache, stacked))
    worst, wn = 0.0, None
    for k, b in enumerate(at.bwds):
        vk = at.flat(jax.tree.map(lambda v, k=k: v[k], vb))
        w, n = worst_leaf(at.diff, vk, at.flat(b), at.names)
        if not w <= worst:
            worst, wn = w, n
    return Check(
        worst < tol, f"vmap over {len(dys)} cotangents vs a loop: {worst:.3e}" + _where(wn)
    )


def batch_independent(at, tol):
    """The batch backward against the sum (dparams) / concatenation (dx) of one-example ones."""
    if getattr(at.layer, "batch_coupled", False):
        return Check(None, "batch_coupled=True: examples interact by design")
    if getattr(at.layer, "stochastic", False):
        return Check(None, "stochastic: a one-example batch draws different randomness")
    m = int(jax.tree.leaves(at.x)[0].shape[0])
    sums, parts = None, []
    for i in range(m):
        dpi, dxi = to_numpy(at.fns.fwd_bwd(at.p, take(at.x, i), take(at.dys[0], i)))
        sums = dpi if sums is None else jax.tree.map(np.add, sums, dpi)
        parts.append(dxi)
    dx_cat = jax.tree.map(lambda *v: np.concatenate(v), *parts)
    worst, wn = worst_leaf(at.diff, at.flat((sums, dx_cat)), at.flat(at.bwds[0]), at.names)
    return Check(
        worst < tol,
        f"sum/concatenation of {m} one-example backwards vs the batch: {worst:.3e}" + _where(wn),
    )


def stochastic_flag(layer, fns, p, x):
    """A layer that says ``stochastic = False`` must give the same y for another key."""
    if getattr(layer, "stochastic", False):
        return Check(None, "stochastic=True: the forward may use its key")
    other = jax.random.fold_in(fns.fkey, 1)
    y1 = jax.tree.leaves(fns.y((p, x)))
    y2 = jax.tree.leaves(fns.y_with_key((p, x), other))
    if all(identical(a, b) for a, b in zip(y1, y2, strict=True)):
        return Check(True, "stochastic=False and the forward ignores its key")
    return Check(False, "the forward's output depends on its key: declare stochastic = True")


def forward_shape(y, out_shape, x):
    """y's shapes against the batch axis plus the ``out_shape`` that ``init`` announced."""
    m = int(jax.tree.leaves(x)[0].shape[0])
    got = [tuple(v.shape) for v in jax.tree.leaves(y)]
    try:
        want = [(m, *s) for s in shape_leaves(shape_tree(out_shape))]
    except (ValueError, TypeError):
        return Check(None, f"init's out_shape {out_shape!r} is not a shape")
    bad_dtype = [str(v.dtype) for v in jax.tree.leaves(y) if not is_float(v)]
    if got != want:
        return Check(False, f"y has shapes {got}, init announced {want} (batch {m})")
    detail = f"y {got[0] if len(got) == 1 else got}"
    return Check(True, detail + (f"; non-float outputs {bad_dtype}" if bad_dtype else ""))
