"""Per-leaf rows of a backward check at one point, and the redraws that step off kinks.

At a point (params p, input x) a layer's hand-written ``backward(p, cache, dy)`` is compared,
leaf by leaf of p and of x, with

- ``jax.vjp`` of the layer's own forward (same state, ``train`` flag and key) for several
  random cotangents dy: ``rel_vjp`` = max over dy of ‖a − b‖₂/(‖a‖₂ + ‖b‖₂);
- a finite-difference directional derivative of ⟨dy, y⟩ along one random unit direction of
  that leaf alone (:mod:`jbp.check_fd`): ``rel_fd`` = |a − b|/(|a| + |b|).

A row passes when ``rel_vjp < autodiff_tol`` and ``rel_fd < fd_tol`` (or the finite
difference is within its own rounding noise). A model's ``loss_and_grad`` is compared the
same way with ``jax.grad`` of its loss (the cotangent is 1), plus the checks ``structure``,
``loss_value`` and ``all_vs_jax_grad`` (all leaves as one vector).

A point on a kink (relu at exactly 0, tied maxima of a pool) makes finite differences
meaningless. When a row fails and the difference quotients show a kink, or finite differences
disagree with the autodiff reference while the reference agrees with the hand-written
gradient, ``redraw_kinks`` draws a new point, up to ``redraws`` times, and notes each redraw.
"""

import dataclasses

import numpy as np

from jbp.check_fd import fd_rows
from jbp.check_report import Check, Row
from jbp.check_trees import (
    grad_scale,
    is_float,
    leaf_diff,
    named,
    normal_like,
    param_name,
    rel_diff,
    short,
    structure_problems,
    usable,
    x_name,
)

_NAN = float("nan")


@dataclasses.dataclass
class LayerPoint:
    """A layer checked at one point: its output, cotangents, gradients and rows."""

    p: object
    x: object
    y: object
    cache: object
    dys: list  # the random cotangents
    refs: list  # jax.vjp's (dparams, dx) for each cotangent
    bwds: list | None  # the backward's (dparams, dx) for each cotangent; None if it raised
    error: str | None  # what the backward raised
    rows: list
    kinks: list  # (leaf name, why) for the leaves whose difference quotients show a kink
    scale: float = 0.0  # the largest reference gradient leaf's norm (see leaf_diff)


@dataclasses.dataclass
class ModelPoint:
    """A model checked at one point: rows, kinks and the model checks."""

    rows: list
    kinks: list
    checks: dict


def redraw_kinks(evaluate, redraws, autodiff_tol, fd_tol, disagree):
    """``evaluate(attempt)`` for attempt 0, 1, … until its rows pass or a failure is not a kink.

    ``disagree`` formats the reason for a redraw when finite differences alone disagree
    (``{}``: the leaves). Returns (the last point, notes, how many points were redrawn).
    """
    notes, redrawn = [], 0
    for attempt in range(redraws + 1):
        pt = evaluate(attempt)
        if all(r.ok for r in pt.rows):
            break
        if attempt == redraws:
            notes += [f"kink at {n} not redrawn (redraws={redraws}): {w}" for n, w in pt.kinks]
            break
        why = _redraw_reason(pt, autodiff_tol, fd_tol, disagree)
        if why is None:
            break  # a plain failure, not a kink: redrawing would not help
        notes.append(f"draw {attempt} redrawn (kink): {why}")
        redrawn += 1
    return pt, notes, redrawn


def _redraw_reason(pt, autodiff_tol, fd_tol, disagree):
    """Why a failing point is redrawn, or None when it is a plain failure."""
    vjp_ok = all(r.rel_vjp < autodiff_tol for r in pt.rows)
    fd_bad = [r.name for r in pt.rows if not r.rel_fd < fd_tol]
    if not pt.kinks and not (vjp_ok and fd_bad):
        return None
    return "; ".join(f"{n}: {w}" for n, w in pt.kinks) or disagree.format(", ".join(fd_bad))


def _row_ok(rel_vjp, rel_fd, fd_note, autodiff_tol, fd_tol):
    return rel_vjp < autodiff_tol and (rel_fd < fd_tol or fd_note.startswith("FD within"))


# ----------------------------------------------------------------------------- layers
def layer_point(layer, fns, p, x, rng, cotangents, dtype, autodiff_tol, fd_tol):
    """Rows (backward vs jax.vjp, and vs finite differences, per leaf) at one point (p, x)."""
    y, cache, _ = fns.forward(p, x)  # eager
    dys = [normal_like(rng, y) for _ in range(cotangents)]
    refs = fns.vjps(p, x, dys)
    bwds, error = _backwards(layer, p, cache, dys)
    scale = grad_scale(*refs)
    rows, manual0 = _vjp_rows(p, x, bwds, refs, scale)
    keys = [("param", n) for n, _ in named(p, param_name)]
    keys += [("input", n) for n, _ in named(x, x_name)]
    fd = fd_rows(fns.y, (p, x), keys, manual0, dys[0], rng, dtype, fd_tol)
    kinks = []
    for r in rows:
        rel_fd, note, kink, why = fd.get((r.kind, r.name), (_NAN, "", False, ""))
        r.rel_fd = rel_fd
        r.note = r.note or note
        r.ok = _row_ok(r.rel_vjp, r.rel_fd, note, autodiff_tol, fd_tol)
        if kink:
            kinks.append((r.name, why))
    return LayerPoint(p, x, y, cache, dys, refs, bwds, error, rows, kinks, scale)


def _backwards(layer, p, cache, dys):
    """(the eager backward for each cotangent, None), or (None, what it raised)."""
    try:
        bwds = [layer.backward(p, cache, dy) for dy in dys]  # eager
        for b in bwds:
            if not (isinstance(b, (tuple, list)) and len(b) == 2):
                raise TypeError(f"backward must return (dparams, dx), got {type(b).__name__}")
        return bwds, None
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return None, f"raised {type(e).__name__}: {short(str(e))}"


def _vjp_rows(p, x, bwds, refs, scale):
    """Rows with ``rel_vjp`` filled in, and ``{(kind, name): gradient}`` for the first dy."""
    rows, manual0 = [], {}
    for kind, tree, idx, namer in (("param", p, 0, param_name), ("input", x, 1, x_name)):
        leaves = dict(named(tree, namer))
        per_k = []
        if bwds is not None:
            for b, r in zip(bwds, refs, strict=True):
                per_k.append((usable(b[idx], tree, namer), dict(named(r[idx], namer))))
            manual0.update({(kind, n): g for n, g in per_k[0][0].items()})
        for n, _ in named(tree, namer):
            if not is_float(leaves[n]):
                continue
            if bwds is None:
                rel, note = _NAN, "backward raised (see structure)"
            elif n not in per_k[0][0]:
                rel, note = _NAN, "missing or wrong shape in backward output"
            else:
                rel, note = max(leaf_diff(g[n], r[n], scale) for g, r in per_k), ""
            rows.append(Row(n, kind, tuple(leaves[n].shape), rel, _NAN, False, note))
    return rows, manual0


# ----------------------------------------------------------------------------- models
def model_point(fns, p, rng, dtype, autodiff_tol, fd_tol, impl_tol):
    """Rows (loss_and_grad vs jax.grad, and vs finite differences, per leaf) and the model
    checks at parameters ``p``; ``fns``: the model's functions (:class:`ModelFns`)."""
    g_ref = fns.grad(p)
    try:
        loss_m, g_man = fns.manual(p)
    except Exception as e:  # noqa: BLE001
        return _raised(p, f"loss_and_grad raised {type(e).__name__}: {short(str(e))}")
    problems = structure_problems(g_man, p, param_name, "grads")
    checks = {
        "structure": Check(
            not problems, "; ".join(problems) or "grads match params (structure, shape, dtype)"
        )
    }
    manual = usable(g_man, p, param_name)
    loss_r = float(fns.loss(p))
    lr = rel_diff(np.asarray(loss_m, np.float64), loss_r)
    checks["loss_value"] = Check(
        lr < impl_tol, f"loss_and_grad {float(loss_m):.12g} vs loss {loss_r:.12g}: {lr:.3e}"
    )
    names = [n for n, _ in named(p, param_name)]
    fd = fd_rows(fns.loss, p, names, manual, np.ones(()), rng, dtype, fd_tol)
    ref = dict(named(g_ref, param_name))
    rows, kinks = _model_rows(p, manual, ref, fd, autodiff_tol, fd_tol, grad_scale(g_ref))
    checks["all_vs_jax_grad"] = _all_at_once(p, manual, ref, problems, autodiff_tol)
    return ModelPoint(rows, kinks, checks)


def _raised(p, err):
    """The point of a ``loss_and_grad`` that raised: every row and ``structure`` fail."""
    leaves = dict(named(p, param_name))
    rows = [
        Row(n, "param", tuple(leaves[n].shape), _NAN, _NAN, False, err)
        for n, _ in named(p, param_name)
        if is_float(leaves[n])
    ]
    return ModelPoint(rows, [], {"structure": Check(False, err)})


def _model_rows(p, manual, ref, fd, autodiff_tol, fd_tol, scale):
    rows, kinks, leaves = [], [], dict(named(p, param_name))
    for n, _ in named(p, param_name):
        if not is_float(leaves[n]):
            continue
        rel_fd, fd_note, kink, why = fd.get(n, (_NAN, "", False, ""))
        if n in manual:
            rel, note = leaf_diff(manual[n], ref[n], scale), fd_note
        else:
            rel, note = _NAN, "missing or wrong shape in loss_and_grad's grads"
        ok = _row_ok(rel, rel_fd, fd_note, autodiff_tol, fd_tol)
        rows.append(Row(n, "param", tuple(leaves[n].shape), rel, rel_fd, ok, note))
        if kink:
            kinks.append((n, why))
    return rows, kinks


def _all_at_once(p, manual, ref, problems, autodiff_tol):
    """``all_vs_jax_grad``: every parameter's gradient as one vector against ``jax.grad``."""
    if problems:
        return Check(None, "not run: grads do not match params")
    leaves = dict(named(p, param_name))
    fl = [n for n, _ in named(p, param_name) if is_float(leaves[n])]
    cat_m = np.concatenate([np.ravel(np.asarray(manual[n], np.float64)) for n in fl] or [[]])
    cat_r = np.concatenate([np.ravel(np.asarray(ref[n], np.float64)) for n in fl] or [[]])
    r = rel_diff(cat_m, cat_r)
    return Check(r < autodiff_tol, f"all {cat_m.size} parameters at once: {r:.3e}")
