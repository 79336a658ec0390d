"""Check any layer's (or model's) hand-written backward: ``check_layer``, ``check_model``.

A layer (the contract of :mod:`jbp.layers`) has ``init(key, in_shape, dtype) -> (params,
state, out_shape)``, ``forward(params, state, x, *, train, key) -> (y, cache, new_state)`` and
``backward(params, cache, dy) -> (dparams, dx)``, a plain vector–Jacobian product. Everything
runs in float64 inside ``with jax.enable_x64(True)`` (the caller need not set the global flag),
with parameters drawn *away* from their initial values (p + ½·rms(p)·N(0, 1): γ ≠ 1, β ≠ 0,
biases ≠ 0, so a backward that forgets a term that vanishes at init is still seen) and
x ~ N(0, 1). The report has one row per leaf of ``params`` and of ``x``:

- **backward vs** ``jax.vjp`` of the layer's own forward (same state, ``train``, key), for
  several random cotangents dy, relative difference ‖a − b‖₂/(‖a‖₂ + ‖b‖₂) < 1e-10;
- **finite differences** of ⟨dy, y⟩ along one random unit direction **per leaf** (only that
  leaf moves), step h scaled to the leaf, compared with ⟨backward's gradient, direction⟩:
  |a − b|/(|a| + |b|) < 1e-7. The difference quotients at h, h/2, h/4 are combined by
  Richardson extrapolation (truncation error O(h⁴), so the step can be large and rounding
  small). Why per leaf: the loose defaults of ``jax.test_util.check_grads`` (one random
  direction over all arguments, tolerance ~1e-5) and of ``torch.autograd.gradcheck``'s fast
  mode (one random vector, atol 1e-5, rtol 1e-3) let a wrong *small* leaf hide beside a big
  one. A bias gradient off by 0.01 % beside a 50×40 weight fed raw pixel values (0–255)
  moves a random directional derivative over all leaves by ~4e-8 (at most ~2e-6 over 20
  directions), while the per-leaf row for the bias reads 5e-5 (``tests/test_check.py``).

and these whole-layer checks (``report.checks``: name -> ``Check(ok, detail)``):

- ``structure``: dparams and dx have the tree structure, shapes and dtypes of params and x
  (the message names the leaf; a wrong leaf fails the report instead of crashing in a
  comparison);
- ``forward_shape``: y has the batch axis plus the ``out_shape`` that ``init`` announced;
- ``stochastic_flag``: a layer with ``stochastic = False`` gives the same y for another key
  (combinators and the training step need not hand a key to a layer that says it needs none);
- ``linear_in_dy``: backward(a·dy₁ + b·dy₂) = a·backward(dy₁) + b·backward(dy₂) (< 1e-10): a
  backward that ignores dy or adds a constant is not a VJP;
- ``zero_dy``: dy = 0 gives exactly 0 in every leaf;
- ``deterministic``: two eager calls of the backward, and two calls of the jitted
  forward+backward (what a training step runs), give identical bits;
- ``eager_vs_jit``: the eager backward ≈ the jitted forward+backward (< 1e-12);
- ``vmap_vs_loop``: ``jax.vmap`` of the backward over a stack of cotangents = a Python loop
  (< 1e-12), so per-example gradients by vmap can be trusted;
- ``batch_independent`` (layers with ``batch_coupled = False``, not stochastic): the batch
  backward = the sum of one-example backwards for dparams and their concatenation for dx
  (< 1e-10); a coupled layer (BatchNorm) must say so, or masking and per-example gradients
  break.

Stochastic layers get the same key for forward, ``jax.vjp``, finite differences and backward.
Kinks: when a row fails and a leaf's difference quotients show a non-differentiable point
(the one-sided slopes differ by the same amount at h and h/4 — a kink *at* the point, as relu
at exactly 0 or tied maxima of a pool — or the Richardson estimates from (h, h/2) and
(h/2, h/4) disagree — a kink within h), or finite differences disagree with ``jax.vjp`` while
``jax.vjp`` agrees with the backward, x and the parameters are redrawn (a given x or given
params are jittered by 0.1·rms), up to ``redraws`` times; ``report.kinks_redrawn`` counts them.

``check_grid`` checks a layer factory over a grid of hyperparameters (a backward that is right
for one stride or padding only passes a single configuration). ``check_model`` does the same
for a whole model (``loss_and_grad`` vs ``jax.grad(loss)`` and per-leaf finite differences).
``load_target`` and ``run_cli`` back ``jbp check module:attr``.

Cost: random draws are made in numpy and the layer's functions are jitted with the layer as
a static argument, so a check compiles a handful of programs (plus the layer's own eager ops,
which the eager-vs-jit check needs) and a second check of an equal layer reuses them.
"""

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

#: defaults (float64): backward vs autodiff, finite differences, jit/vmap vs eager
AUTODIFF_TOL = 1e-10
FD_TOL = 1e-7
IMPL_TOL = 1e-12


def _enable_x64():
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


# ----------------------------------------------------------------------------- report
@dataclasses.dataclass
class Row:
    """One leaf of params (``kind="param"``) or of x (``kind="input"``)."""

    name: str
    kind: str
    shape: tuple
    rel_vjp: float  # backward vs jax.vjp (jax.grad for models), max over the cotangents
    rel_fd: float  # ⟨backward, u⟩ vs finite differences along one random unit u
    ok: bool
    note: str = ""


@dataclasses.dataclass
class Check:
    """A whole-layer check: ``ok`` is True, False, or None when it does not apply."""

    ok: bool | None
    detail: str


@dataclasses.dataclass
class LayerReport:
    """What ``check_layer`` / ``check_model`` found; ``ok`` when every row and check passes."""

    target: str
    kind: str  # "layer" or "model"
    rows: list
    checks: dict
    kinks_redrawn: int
    dtype: str
    autodiff_tol: float
    fd_tol: float
    impl_tol: float
    batch: int
    cotangents: int
    reference: str = "jax.vjp"
    notes: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return all(r.ok for r in self.rows) and all(c.ok is not False for c in self.checks.values())

    @property
    def failures(self):
        """Names of the failing rows and checks."""
        return [r.name for r in self.rows if not r.ok] + [
            n for n, c in self.checks.items() if c.ok is False
        ]

    def to_dict(self):
        """A JSON-serialisable dict (non-finite numbers become ``None``)."""
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["failures"] = self.failures
        return _jsonable(d)

    def table(self):
        """A readable text table: one line per leaf, one per check, then PASS/FAIL."""
        who = "manual" if self.kind == "model" else "backward"
        c1, c2 = f"{who} vs {self.reference}", f"{who} vs FD"
        nw = max([4] + [len(r.name) for r in self.rows])
        sw = max([5] + [len(str(tuple(r.shape))) for r in self.rows])
        cot = f"{self.cotangents} cotangents, " if self.kind == "layer" else ""
        lines = [
            f"check_{self.kind}: {self.target} ({self.dtype}, batch {self.batch}, {cot}"
            f"kinks redrawn: {self.kinks_redrawn})",
            f"{'leaf':<{nw}} {'kind':<5} {'shape':>{sw}} {c1:>20} {c2:>15}  result",
        ]
        for r in self.rows:
            lines.append(
                f"{r.name:<{nw}} {r.kind:<5} {str(tuple(r.shape)):>{sw}} {r.rel_vjp:>20.3e} "
                f"{r.rel_fd:>15.3e}  {'ok' if r.ok else 'FAIL'}"
                + (f"  ({r.note})" if r.note else "")
            )
        cw = max([5] + [len(n) for n in self.checks])
        lines.append(f"{'check':<{cw}}  result  detail")
        for n, c in self.checks.items():
            res = {True: "ok", False: "FAIL", None: "n/a"}[c.ok]
            lines.append(f"{n:<{cw}}  {res:<6}  {c.detail}")
        lines.extend(f"note: {m}" for m in self.notes)
        verdict = "PASS" if self.ok else "FAIL: " + ", ".join(self.failures)
        lines.append(
            f"tolerances: {self.reference} < {self.autodiff_tol:g}, finite differences < "
            f"{self.fd_tol:g}, jit/vmap < {self.impl_tol:g} ({self.dtype}) -> {verdict}"
        )
        return "\n".join(lines)

    def __str__(self):
        return self.table()


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if v is None or isinstance(v, str):
        return v
    return str(v)


# ----------------------------------------------------------------------------- helpers
def rel_diff(a, b):
    """‖a − b‖₂ / (‖a‖₂ + ‖b‖₂), 0 when both are zero (NaN when either has a NaN)."""
    a = np.ravel(np.asarray(a, np.float64))
    b = np.ravel(np.asarray(b, np.float64))
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else float(np.linalg.norm(a - b) / den)


def _is_float(a):
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def _key_str(k):
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _param_name(path):
    return "/".join(_key_str(k) for k in path) or "params"


def _x_name(path):
    return "x" + jax.tree_util.keystr(path)


def _named(tree, namer, none_leaf=False):
    is_leaf = (lambda v: v is None) if none_leaf else None
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(namer(p), v) for p, v in flat]


def _shape_tree(s):
    """``(3, 4)`` -> a shape; ``((3,), (4,))`` -> a tuple of shapes; ``5`` -> ``(5,)``."""
    if isinstance(s, (int, np.integer)):
        return (int(s),)
    if isinstance(s, (tuple, list)):
        if all(isinstance(d, (int, np.integer)) for d in s):
            return tuple(int(d) for d in s)
        return tuple(_shape_tree(e) for e in s)
    raise ValueError(f"a shape must be a tuple of ints or a tuple of shapes, got {s!r}")


def _shape_leaves(s):
    if isinstance(s, tuple) and all(isinstance(d, int) for d in s):
        return [s]
    return [leaf for e in s for leaf in _shape_leaves(e)]


def _rng(key, *salt):
    """A numpy Generator seeded from a JAX key (drawing in numpy compiles nothing)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([int(w) for w in np.asarray(key).ravel()] + list(salt))


def _draw_input(rng, shapes, batch, dtype):
    if all(isinstance(d, int) for d in shapes):
        return jnp.asarray(rng.standard_normal((batch, *shapes)), dtype)
    return tuple(_draw_input(rng, s, batch, dtype) for s in shapes)


def _cast(tree, dtype):
    return jax.tree.map(lambda v: jnp.asarray(v, dtype) if _is_float(v) else v, tree)


def _rms(v):
    v = np.asarray(v, np.float64)
    return float(np.sqrt(np.mean(np.square(v)))) if v.size else 0.0


def _perturb(rng, tree, scale):
    """Every floating leaf p -> p + scale·(rms(p) or 1)·N(0, 1)."""

    def move(v):
        if not _is_float(v) or not v.size:
            return v
        step = scale * (_rms(v) or 1.0) * rng.standard_normal(v.shape)
        return jnp.asarray(np.asarray(v, np.float64) + step, v.dtype)

    return jax.tree.map(move, tree)


def _normal_like(rng, tree):
    return jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape), v.dtype), tree)


def _take(tree, i):
    """Example i (keeping the batch axis), sliced in numpy: no compilation per index."""
    return jax.tree.map(lambda v: jnp.asarray(np.asarray(v)[i : i + 1]), tree)


def _like(a, v):
    """numpy ``a`` as a JAX array of ``v``'s dtype."""
    return jnp.asarray(np.asarray(a, v.dtype))


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _identical(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _structure_problems(got, ref, namer, what):
    """Messages for every leaf of ``got`` whose presence, shape or dtype differs from ``ref``."""
    ref_items = _named(ref, namer)
    got_items = _named(got, namer, none_leaf=True)
    if not ref_items and all(v is None for _, v in got_items):
        return []
    rd, gd = dict(ref_items), dict(got_items)
    problems = [f"{what}: leaf {n!r} is missing" for n in rd if n not in gd]
    problems += [f"{what}: unexpected leaf {n!r}" for n in gd if n not in rd]
    for n, r in rd.items():
        if n not in gd or not _is_float(r):
            continue
        g = gd[n]
        if g is None or not hasattr(g, "shape"):
            problems.append(f"{what}: leaf {n!r} is {type(g).__name__}, expected an array")
        elif tuple(g.shape) != tuple(r.shape):
            problems.append(
                f"{what}: leaf {n!r} has shape {tuple(g.shape)}, expected {tuple(r.shape)}"
            )
        elif g.dtype != r.dtype:
            problems.append(f"{what}: leaf {n!r} has dtype {g.dtype}, expected {r.dtype}")
    if not problems:
        tg = jax.tree.structure(got, is_leaf=lambda v: v is None)
        tr = jax.tree.structure(ref)
        if tg != tr:
            problems.append(f"{what}: container types differ: got {tg}, expected {tr}")
    return problems


def _usable(got, ref, namer):
    """name -> leaf of ``got`` that matches ``ref``'s leaf in shape (others left out)."""
    try:
        gd = dict(_named(got, namer, none_leaf=True))
    except Exception:  # noqa: BLE001 - an odd object is simply unusable
        return {}
    out = {}
    for n, r in _named(ref, namer):
        g = gd.get(n)
        if _is_float(r) and hasattr(g, "shape") and tuple(g.shape) == tuple(r.shape):
            out[n] = g
    return out


def _split_arrays(tree):
    """(array leaves, rebuild): ``rebuild(arrays)`` puts (traced) arrays back in place and keeps
    anything else (Python numbers, strings) static, so a cache can cross a ``jit`` boundary."""
    leaves, treedef = jax.tree.flatten(tree)
    dyn = [i for i, v in enumerate(leaves) if isinstance(v, (jax.Array, np.ndarray))]

    def rebuild(arrays):
        ls = list(leaves)
        for i, a in zip(dyn, arrays, strict=True):
            ls[i] = a
        return jax.tree.unflatten(treedef, ls)

    return [leaves[i] for i in dyn], rebuild


def _per_leaf(fn, trees_a, trees_b, names):
    """max over leaves of fn(a, b); returns (value, worst leaf name)."""
    worst, name = 0.0, ""
    for n in names:
        v = fn(trees_a[n], trees_b[n])
        if not v <= worst:  # NaN counts as worst
            worst, name = v, n
            if math.isnan(v):
                break
    return worst, name


def _guard(fn):
    """Run one check; an exception becomes a failing check naming it."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a broken backward must not crash the report
        return Check(False, f"raised {type(e).__name__}: {_short(str(e))}")


def _short(s, n=200):
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _describe(obj):
    name = getattr(obj, "name", None)
    s = name if isinstance(name, str) and name else repr(obj)
    if s.startswith("<") and " object at 0x" in s:  # the default repr says nothing
        s = type(obj).__name__
    return _short(s, 80)


# --------------------------------------------------------------- finite differences
def _fd_leaf(fj, leaves, treedef, i, u, h, dyl, y0l, noise, fd_tol):
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


def _fd_rows(fj, P, names, grads, dy, rng, dtype, fd_tol):
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
        if not _is_float(leaf):
            continue
        if leaf.size == 0:
            out[n] = (0.0, "empty", False, "")
            continue
        u = rng.standard_normal(leaf.shape)
        u /= np.linalg.norm(u)
        h = eps**0.2 * max(1.0, _rms(leaf))  # Richardson: truncation O(h⁴), rounding eps·|φ|/h
        noise = 64 * eps * scale / h  # rounding level of one difference quotient
        fd, kink, why = _fd_leaf(fj, leaves, treedef, i, u, h, dyl, y0l, noise, fd_tol)
        g = grads.get(n)
        if g is None:
            out[n] = (float("nan"), "no usable gradient", kink, why)
            continue
        a = float(np.vdot(np.asarray(g, np.float64), u))
        den = abs(a) + abs(fd)
        rel = 0.0 if den == 0 else abs(a - fd) / den
        note = ""
        if not rel < fd_tol and abs(a - fd) <= noise:
            note = "FD within rounding noise"
        out[n] = (rel, note, kink, why)
    return out


# ----------------------------------------------------------------------------- layers
def check_layer(
    layer,
    in_shape,
    *,
    batch=4,
    key=None,
    dtype=jnp.float64,
    train=True,
    cotangents=3,
    x=None,
    params=None,
    state=None,
    redraws=10,
    autodiff_tol=AUTODIFF_TOL,
    fd_tol=FD_TOL,
    impl_tol=IMPL_TOL,
):
    """Check ``layer.backward`` against ``jax.vjp`` of its forward, finite differences and the
    whole-layer properties listed in this module's docstring.

    Args:
      layer: an object with ``init``, ``forward``, ``backward`` (and optionally
        ``batch_coupled``, ``stochastic``).
      in_shape: the input shape without the batch axis, or a tuple of shapes for a
        multi-input layer (then x is a tuple of arrays).
      batch: examples in x (ignored when ``x`` is given).
      key: a PRNG key; default ``jax.random.PRNGKey(0)``.
      dtype: the floating dtype of everything (float64; the check enables x64 itself).
      train: passed to ``forward``.
      cotangents: how many random dy the ``jax.vjp`` comparison takes the max over.
      x, params, state: use these instead of drawing them (params are then not moved away
        from their values; a redraw after a kink jitters them by 0.1·rms).
      redraws: how many times a point on a kink may be redrawn.
      autodiff_tol, fd_tol, impl_tol: tolerances (vs ``jax.vjp``/linearity/batch; finite
        differences; eager vs jit and vmap vs loop).

    Returns:
      a :class:`LayerReport` (``.ok``, ``.table()``, ``.to_dict()``, ``.rows``, ``.checks``).
    """
    with _enable_x64():
        return _check_layer(
            layer,
            in_shape,
            batch=batch,
            key=key,
            dtype=dtype,
            train=train,
            cotangents=cotangents,
            x=x,
            params=params,
            state=state,
            redraws=redraws,
            autodiff_tol=autodiff_tol,
            fd_tol=fd_tol,
            impl_tol=impl_tol,
        )


def _check_layer(layer, in_shape, *, batch, key, dtype, train, cotangents, x, params, state,
                 redraws, autodiff_tol, fd_tol, impl_tol):  # fmt: skip
    if cotangents < 1:
        raise ValueError(f"cotangents must be >= 1, got cotangents={cotangents}")
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, fkey = jax.random.split(key)  # fkey: forward, vjp, FD and backward share it
    shapes = _shape_tree(in_shape)
    x_given, p_given = x is not None, params is not None
    if x_given:
        x = _cast(x, dtype)
        batch = int(jax.tree.leaves(x)[0].shape[0])
    p_init, s_init, out_shape = layer.init(k_init, shapes, dtype)
    p_init = _cast(p_init, dtype)
    state = _cast(s_init if state is None else state, dtype)
    params = _cast(params, dtype) if p_given else None
    fns = _LayerFns(layer, state, fkey, train)
    notes, redrawn = [], 0
    for kind, tree, namer in (("param", p_init, _param_name), ("input", x, _x_name)):
        skipped = [n for n, v in _named(tree, namer) if v is not None and not _is_float(v)]
        if skipped:
            notes.append(f"{kind} leaves {', '.join(skipped)} are not floating: not differentiated")
    for attempt in range(redraws + 1):
        rng = _rng(key, attempt)
        if p_given:
            p = params if attempt == 0 else _perturb(rng, params, 0.1)
        else:
            p = _perturb(rng, p_init, 0.5)
        if x_given:
            xa = x if attempt == 0 else _perturb(rng, x, 0.1)
        else:
            xa = _draw_input(rng, shapes, batch, dtype)
        pt = _layer_point(layer, fns, p, xa, rng, cotangents, dtype, autodiff_tol, fd_tol)
        rows, kinks = pt["rows"], pt["kinks"]
        if all(r.ok for r in rows):
            break
        if attempt == redraws:
            notes += [f"kink at {n} not redrawn (redraws={redraws}): {w}" for n, w in kinks]
            break
        vjp_ok = all(r.rel_vjp < autodiff_tol for r in rows)
        fd_bad = [r.name for r in rows if not r.rel_fd < fd_tol]
        if not kinks and not (vjp_ok and fd_bad):
            break  # a plain failure, not a kink: redrawing would not help
        why = "; ".join(f"{n}: {w}" for n, w in kinks) or (
            f"finite differences disagree with jax.vjp on {', '.join(fd_bad)} while jax.vjp "
            "agrees with the backward"
        )
        notes.append(f"draw {attempt} redrawn (kink): {why}")
        redrawn += 1
    checks = _layer_checks(layer, fns, pt, out_shape, autodiff_tol, impl_tol)
    return LayerReport(
        target=_describe(layer),
        kind="layer",
        rows=rows,
        checks=checks,
        kinks_redrawn=redrawn,
        dtype=str(jnp.dtype(dtype)),
        autodiff_tol=autodiff_tol,
        fd_tol=fd_tol,
        impl_tol=impl_tol,
        batch=batch,
        cotangents=cotangents,
        reference="jax.vjp",
        notes=notes,
    )


class _ById:
    """A static-argument handle for an unhashable layer (compared by identity)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


def _unwrap(h):
    return h.obj if isinstance(h, _ById) else h


def _forward(h, train, p, x, state, key):
    return _unwrap(h).forward(p, state, x, train=train, key=key)


# Jitted with the layer and ``train`` static: a layer is hashable, so the compilations are
# reused across checks of the same layer (redraws, grids, repeated tests).
@functools.partial(jax.jit, static_argnums=(0, 1))
def _y(h, train, P, state, key):
    return _forward(h, train, *P, state, key)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vjps(h, train, p, x, state, key, dys):
    _, vjp_fn = jax.vjp(lambda p, x: _forward(h, train, p, x, state, key)[0], p, x)
    return [vjp_fn(dy) for dy in dys]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fwd_bwd(h, train, p, x, state, key, dy):
    """Forward then backward in one program, as a jitted training step runs them."""
    return _unwrap(h).backward(p, _forward(h, train, p, x, state, key)[1], dy)


class _LayerFns:
    """The layer's functions at a fixed state, train flag and key."""

    def __init__(self, layer, state, fkey, train):
        try:
            hash(layer)
            self.h = layer
        except TypeError:
            self.h = _ById(layer)
        self.layer, self.state, self.fkey, self.train = layer, state, fkey, train

    def forward(self, p, x):  # eager
        return _forward(self.h, self.train, p, x, self.state, self.fkey)

    def y(self, P):
        return _y(self.h, self.train, P, self.state, self.fkey)

    def vjps(self, p, x, dys):
        return _vjps(self.h, self.train, p, x, self.state, self.fkey, dys)

    def fwd_bwd(self, p, x, dy):
        return _fwd_bwd(self.h, self.train, p, x, self.state, self.fkey, dy)

    def vmap_bwd(self, p, cache, dys):
        arrays, rebuild = _split_arrays(cache)
        run = jax.jit(jax.vmap(lambda a, dy: self.layer.backward(p, rebuild(a), dy), (None, 0)))
        return run(arrays, dys)


def _layer_point(layer, fns, p, x, rng, cotangents, dtype, autodiff_tol, fd_tol):
    """Rows (backward vs jax.vjp, and vs finite differences, per leaf) at one point (p, x)."""
    y, cache, _ = fns.forward(p, x)  # eager
    dys = [_normal_like(rng, y) for _ in range(cotangents)]
    refs = fns.vjps(p, x, dys)
    pt = dict(p=p, x=x, y=y, cache=cache, dys=dys, refs=refs, error=None, bwds=None)
    p_names = [n for n, _ in _named(p, _param_name)]
    x_names = [n for n, _ in _named(x, _x_name)]
    try:
        bwds = [layer.backward(p, cache, dy) for dy in dys]  # eager
        for b in bwds:
            if not (isinstance(b, (tuple, list)) and len(b) == 2):
                raise TypeError(f"backward must return (dparams, dx), got {type(b).__name__}")
        pt["bwds"] = bwds
    except Exception as e:  # noqa: BLE001 - reported, not raised
        pt["error"] = f"raised {type(e).__name__}: {_short(str(e))}"
        bwds = None
    rows, manual0 = [], {}
    for kind, names, ref_tree, idx, namer in (
        ("param", p_names, p, 0, _param_name),
        ("input", x_names, x, 1, _x_name),
    ):
        leaves = dict(_named(ref_tree, namer))
        per_k = []
        if bwds is not None:
            for b, r in zip(bwds, refs, strict=True):
                per_k.append((_usable(b[idx], ref_tree, namer), dict(_named(r[idx], namer))))
            manual0.update({(kind, n): g for n, g in per_k[0][0].items()})
        for n in names:
            if not _is_float(leaves[n]):
                continue
            if bwds is None:
                rel, note = float("nan"), "backward raised (see structure)"
            elif n not in per_k[0][0]:
                rel, note = float("nan"), "missing or wrong shape in backward output"
            else:
                rel, note = max(rel_diff(g[n], r[n]) for g, r in per_k), ""
            rows.append(Row(n, kind, tuple(leaves[n].shape), rel, float("nan"), False, note))
    keys = [("param", n) for n in p_names] + [("input", n) for n in x_names]
    fd = _fd_rows(fns.y, (p, x), keys, manual0, dys[0], rng, dtype, fd_tol)
    kinks = []
    for r in rows:
        rel_fd, note, kink, why = fd.get((r.kind, r.name), (float("nan"), "", False, ""))
        r.rel_fd = rel_fd
        r.note = r.note or note
        r.ok = r.rel_vjp < autodiff_tol and (r.rel_fd < fd_tol or note.startswith("FD within"))
        if kink:
            kinks.append((r.name, why))
    pt["rows"], pt["kinks"] = rows, kinks
    return pt


_SKIPPED_ON_BAD_STRUCTURE = (
    "linear_in_dy",
    "zero_dy",
    "deterministic",
    "eager_vs_jit",
    "vmap_vs_loop",
    "batch_independent",
)


def _layer_checks(layer, fns, pt, out_shape, autodiff_tol, impl_tol):
    p, x, y, cache, dys, bwds = pt["p"], pt["x"], pt["y"], pt["cache"], pt["dys"], pt["bwds"]
    checks = {}
    if bwds is None:
        checks["structure"] = Check(False, f"backward {pt['error']}")
        return checks
    problems = _structure_problems(bwds[0][0], p, _param_name, "dparams")
    problems += _structure_problems(bwds[0][1], x, _x_name, "dx")
    checks["structure"] = Check(
        not problems,
        "; ".join(problems) or "dparams and dx match params and x (structure, shape, dtype)",
    )
    checks["forward_shape"] = _guard(lambda: _forward_shape(y, out_shape, x))
    checks["stochastic_flag"] = _guard(lambda: _key_use(layer, fns, p, x))
    if problems:
        for n in _SKIPPED_ON_BAD_STRUCTURE:
            checks[n] = Check(None, "not run: the backward's output does not match params/x")
        return checks
    names = [("p", n) for n, v in _named(p, _param_name) if _is_float(v)]
    names += [("x", n) for n, v in _named(x, _x_name) if _is_float(v)]

    def flat(b):
        d = {("p", n): v for n, v in _named(b[0], _param_name, none_leaf=True)}
        d.update({("x", n): v for n, v in _named(b[1], _x_name, none_leaf=True)})
        return d

    def where(n):
        return f" ({n[1]})" if n else ""

    def bwd(dy):
        return layer.backward(p, cache, dy)

    def linear():
        dy1 = dys[0]
        dy2 = dys[1] if len(dys) > 1 else jax.tree.map(lambda v: _like(0.5 - np.asarray(v), v), dy1)
        a, b = 1.7, -0.6  # a + b ≠ 1: a constant term in the backward shows too
        mix = jax.tree.map(lambda u, v: _like(a * np.asarray(u) + b * np.asarray(v), u), dy1, dy2)
        lhs = flat(bwd(mix))
        g1, g2 = flat(bwds[0]), flat(bwds[1] if len(dys) > 1 else bwd(dy2))
        worst, wn = 0.0, None
        for n in names:
            l1, r1, r2 = (np.asarray(t[n], np.float64) for t in (lhs, g1, g2))
            num = np.linalg.norm(l1 - (a * r1 + b * r2))
            den = np.linalg.norm(l1) + abs(a) * np.linalg.norm(r1) + abs(b) * np.linalg.norm(r2)
            v = 0.0 if den == 0 else float(num / den)
            if not v <= worst:
                worst, wn = v, n
        return Check(
            worst < autodiff_tol,
            f"backward(a·dy1 + b·dy2) vs a·backward(dy1) + b·backward(dy2): {worst:.3e}"
            + where(wn),
        )

    def zero():
        z = flat(bwd(jax.tree.map(lambda v: jnp.asarray(np.zeros(v.shape, v.dtype)), dys[0])))
        bad = [n for n in names if not np.all(np.asarray(z[n]) == 0)]
        if bad:
            m = float(np.nanmax(np.abs(np.asarray(z[bad[0]], np.float64))))
            return Check(
                False,
                f"dy = 0 gives nonzero gradients in {', '.join(n[1] for n in bad)} "
                f"(max |{bad[0][1]}| = {m:.3g})",
            )
        return Check(True, "dy = 0 gives exactly 0 in every leaf")

    def deterministic():
        e1, e2 = flat(bwds[0]), flat(bwd(dys[0]))
        j1, j2 = flat(fns.fwd_bwd(p, x, dys[0])), flat(fns.fwd_bwd(p, x, dys[0]))
        bad_e = [n[1] for n in names if not _identical(e1[n], e2[n])]
        bad_j = [n[1] for n in names if not _identical(j1[n], j2[n])]
        parts = [f"two eager calls differ in {', '.join(bad_e)}"] if bad_e else []
        parts += [f"two jitted calls differ in {', '.join(bad_j)}"] if bad_j else []
        if parts:
            return Check(False, "; ".join(parts))
        return Check(True, "two eager and two jitted calls give identical bits")

    def eager_jit():
        e, j = flat(bwds[0]), flat(fns.fwd_bwd(p, x, dys[0]))
        worst, wn = _per_leaf(rel_diff, e, j, names)
        return Check(worst < impl_tol, f"forward+backward jitted vs eager: {worst:.3e}" + where(wn))

    def vmap_loop():
        vb = _np(fns.vmap_bwd(p, cache, jax.tree.map(lambda *v: jnp.asarray(np.stack(v)), *dys)))
        worst, wn = 0.0, None
        for k, b in enumerate(bwds):
            w, n = _per_leaf(rel_diff, flat(jax.tree.map(lambda v, k=k: v[k], vb)), flat(b), names)
            if not w <= worst:
                worst, wn = w, n
        return Check(
            worst < impl_tol, f"vmap over {len(dys)} cotangents vs a loop: {worst:.3e}" + where(wn)
        )

    def batch_independent():
        if getattr(layer, "batch_coupled", False):
            return Check(None, "batch_coupled=True: examples interact by design")
        if getattr(layer, "stochastic", False):
            return Check(None, "stochastic: a one-example batch draws different randomness")
        m = int(jax.tree.leaves(x)[0].shape[0])
        sums, parts = None, []
        for i in range(m):
            dpi, dxi = _np(fns.fwd_bwd(p, _take(x, i), _take(dys[0], i)))
            sums = dpi if sums is None else jax.tree.map(np.add, sums, dpi)
            parts.append(dxi)
        dx_cat = jax.tree.map(lambda *v: np.concatenate(v), *parts)
        worst, wn = _per_leaf(rel_diff, flat((sums, dx_cat)), flat(bwds[0]), names)
        return Check(
            worst < autodiff_tol,
            f"sum/concatenation of {m} one-example backwards vs the batch: {worst:.3e}" + where(wn),
        )

    checks["linear_in_dy"] = _guard(linear)
    checks["zero_dy"] = _guard(zero)
    checks["deterministic"] = _guard(deterministic)
    checks["eager_vs_jit"] = _guard(eager_jit)
    checks["vmap_vs_loop"] = _guard(vmap_loop)
    checks["batch_independent"] = _guard(batch_independent)
    return checks


def _key_use(layer, fns, p, x):
    """A layer that says ``stochastic = False`` must give the same y for another key."""
    if getattr(layer, "stochastic", False):
        return Check(None, "stochastic=True: the forward may use its key")
    other = jax.random.fold_in(fns.fkey, 1)
    y1 = jax.tree.leaves(fns.y((p, x)))
    y2 = jax.tree.leaves(_y(fns.h, fns.train, (p, x), fns.state, other))
    if all(_identical(a, b) for a, b in zip(y1, y2, strict=True)):
        return Check(True, "stochastic=False and the forward ignores its key")
    return Check(False, "the forward's output depends on its key: declare stochastic = True")


def _forward_shape(y, out_shape, x):
    m = int(jax.tree.leaves(x)[0].shape[0])
    got = [tuple(v.shape) for v in jax.tree.leaves(y)]
    try:
        want = [(m, *s) for s in _shape_leaves(_shape_tree(out_shape))]
    except (ValueError, TypeError):
        return Check(None, f"init's out_shape {out_shape!r} is not a shape")
    bad_dtype = [str(v.dtype) for v in jax.tree.leaves(y) if not _is_float(v)]
    if got != want:
        return Check(False, f"y has shapes {got}, init announced {want} (batch {m})")
    return Check(True, f"y {got[0] if len(got) == 1 else got}" + (
        f"; non-float outputs {bad_dtype}" if bad_dtype else ""))  # fmt: skip


def check_grid(factory, grid, in_shape, **kwargs):
    """Check ``factory(**config)`` for every combination of a hyperparameter grid.

    A backward right for one padding or stride only passes a single configuration, so layers
    with hyperparameters should be checked over a grid.

    Args:
      factory: ``**config -> layer``; grid: ``{"stride": [1, 2], "padding": [0, 1], ...}``;
      in_shape, kwargs: passed to :func:`check_layer`.

    Returns:
      a list of ``(config, report)``.
    """
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        cfg = dict(zip(keys, values, strict=True))
        out.append((cfg, check_layer(factory(**cfg), in_shape, **kwargs)))
    return out


# ----------------------------------------------------------------------------- models
def check_model(
    model,
    x,
    y,
    *,
    params=None,
    state=None,
    key=None,
    mask=None,
    train=True,
    dtype=jnp.float64,
    redraws=10,
    fd_tol=FD_TOL,
    autodiff_tol=AUTODIFF_TOL,
    impl_tol=IMPL_TOL,
):
    """Check ``model.loss_and_grad`` against ``jax.grad(model.loss)`` and finite differences.

    The model protocol: ``initialize(key, dtype) -> (params, state)``,
    ``loss(params, x, y, mask=None, *, state, train, key) -> scalar`` and
    ``loss_and_grad(params, x, y, mask=None, *, state, train, key) -> (loss, grads)``.
    Parameters are drawn away from their initial values unless given; one row per parameter
    leaf (< ``autodiff_tol`` against ``jax.grad``, < ``fd_tol`` against one central
    difference per leaf along a random unit direction), plus the checks ``structure``,
    ``loss_value`` (the two losses agree) and ``all_vs_jax_grad`` (all leaves at once).

    Returns:
      a :class:`LayerReport` with ``kind="model"``.
    """
    with _enable_x64():
        key = jax.random.PRNGKey(0) if key is None else key
        k_init, k_fwd = jax.random.split(key)
        x = _cast(x, dtype)
        mask = None if mask is None else _cast(mask, dtype)
        p_given = params is not None
        if p_given and state is not None:
            params, state = _cast(params, dtype), _cast(state, dtype)
        else:
            p_init, s0 = model.initialize(k_init, dtype)
            params = _cast(params if p_given else p_init, dtype)
            state = _cast(s0 if state is None else state, dtype)
        p0 = params

        def loss(p, x, y, mask, key):
            return model.loss(p, x, y, mask, state=state, train=train, key=key)

        fj = jax.jit(lambda p: loss(p, x, y, mask, k_fwd))
        grad_ref = jax.jit(jax.grad(loss))
        notes, redrawn = [], 0
        for attempt in range(redraws + 1):
            rng = _rng(key, attempt)
            if p_given:
                p = p0 if attempt == 0 else _perturb(rng, p0, 0.1)
            else:
                p = _perturb(rng, p0, 0.5)
            pt = _model_point(model, p, x, y, mask, state, train, k_fwd, fj, grad_ref, rng,
                              dtype, autodiff_tol, fd_tol, impl_tol)  # fmt: skip
            rows = pt["rows"]
            if all(r.ok for r in rows):
                break
            if attempt == redraws:
                notes += [
                    f"kink at {n} not redrawn (redraws={redraws}): {w}" for n, w in pt["kinks"]
                ]
                break
            vjp_ok = all(r.rel_vjp < autodiff_tol for r in rows)
            fd_bad = [r.name for r in rows if not r.rel_fd < fd_tol]
            if not pt["kinks"] and not (vjp_ok and fd_bad):
                break
            why = "; ".join(f"{n}: {w}" for n, w in pt["kinks"]) or (
                f"finite differences disagree with jax.grad on {', '.join(fd_bad)}"
            )
            notes.append(f"draw {attempt} redrawn (kink): {why}")
            redrawn += 1
        return LayerReport(
            target=_describe(model),
            kind="model",
            rows=rows,
            checks=pt["checks"],
            kinks_redrawn=redrawn,
            dtype=str(jnp.dtype(dtype)),
            autodiff_tol=autodiff_tol,
            fd_tol=fd_tol,
            impl_tol=impl_tol,
            batch=int(jax.tree.leaves(x)[0].shape[0]),
            cotangents=1,
            reference="jax.grad",
            notes=notes,
        )


def _model_point(model, p, x, y, mask, state, train, k_fwd, fj, grad_ref, rng, dtype,
                 autodiff_tol, fd_tol, impl_tol):  # fmt: skip
    checks = {}
    g_ref = grad_ref(p, x, y, mask, k_fwd)
    names = [n for n, v in _named(p, _param_name)]
    leaves = dict(_named(p, _param_name))
    ref = dict(_named(g_ref, _param_name))
    try:

        def manual(p, x, y, mask, key):
            out = model.loss_and_grad(p, x, y, mask, state=state, train=train, key=key)
            return out[0], out[1]

        try:  # one compilation instead of one per eager op
            loss_m, g_man = jax.jit(manual)(p, x, y, mask, k_fwd)
        except Exception:  # noqa: BLE001 - not jittable: run it as it is
            loss_m, g_man = manual(p, x, y, mask, k_fwd)
    except Exception as e:  # noqa: BLE001
        err = f"loss_and_grad raised {type(e).__name__}: {_short(str(e))}"
        rows = [
            Row(n, "param", tuple(leaves[n].shape), float("nan"), float("nan"), False, err)
            for n in names
            if _is_float(leaves[n])
        ]
        return dict(rows=rows, kinks=[], checks={"structure": Check(False, err)})
    problems = _structure_problems(g_man, p, _param_name, "grads")
    checks["structure"] = Check(
        not problems, "; ".join(problems) or "grads match params (structure, shape, dtype)"
    )
    manual = _usable(g_man, p, _param_name)
    loss_r = float(fj(p))
    lr = rel_diff(np.asarray(loss_m, np.float64), loss_r)
    checks["loss_value"] = Check(
        lr < impl_tol, f"loss_and_grad {float(loss_m):.12g} vs loss {loss_r:.12g}: {lr:.3e}"
    )
    fd = _fd_rows(fj, p, names, manual, np.ones(()), rng, dtype, fd_tol)
    rows, kinks = [], []
    for n in names:
        if not _is_float(leaves[n]):
            continue
        rel_fd, note, kink, why = fd.get(n, (float("nan"), "", False, ""))
        if n in manual:
            rel = rel_diff(manual[n], ref[n])
        else:
            rel, note = float("nan"), "missing or wrong shape in loss_and_grad's grads"
        ok = rel < autodiff_tol and (rel_fd < fd_tol or note.startswith("FD within"))
        rows.append(Row(n, "param", tuple(leaves[n].shape), rel, rel_fd, ok, note))
        if kink:
            kinks.append((n, why))
    if not problems:
        fl = [n for n in names if _is_float(leaves[n])]
        cat_m = np.concatenate([np.ravel(np.asarray(manual[n], np.float64)) for n in fl] or [[]])
        cat_r = np.concatenate([np.ravel(np.asarray(ref[n], np.float64)) for n in fl] or [[]])
        r = rel_diff(cat_m, cat_r)
        checks["all_vs_jax_grad"] = Check(
            r < autodiff_tol, f"all {cat_m.size} parameters at once: {r:.3e}"
        )
    else:
        checks["all_vs_jax_grad"] = Check(None, "not run: grads do not match params")
    return dict(rows=rows, kinks=kinks, checks=checks)


# ----------------------------------------------------------------------------- CLI
def _is_layer(obj):
    return all(callable(getattr(obj, n, None)) for n in ("init", "forward", "backward"))


def _is_model(obj):
    return all(callable(getattr(obj, n, None)) for n in ("loss", "loss_and_grad"))


def _import(mod, spec):
    if mod.endswith(".py") or os.sep in mod or "/" in mod:
        path = os.path.abspath(mod)
        if not os.path.isfile(path):
            raise ValueError(f"{spec!r}: no such file {mod!r}")
        stem = os.path.splitext(os.path.basename(path))[0]
        name = f"_jbp_check_{stem}_{abs(hash(path)):x}"
        s = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(s)
        sys.modules[name] = module  # dataclasses look their module up while it runs
        sys.path.insert(0, os.path.dirname(path))  # its sibling modules import
        try:
            s.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)
            raise
        finally:
            sys.path.remove(os.path.dirname(path))
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` would: ./mine.py
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (mod == e.name or mod.startswith(e.name + ".")):
            raise ValueError(
                f"{spec!r}: module {mod!r} not found (give an importable module name or a "
                f"path to a .py file, e.g. path/to/layers.py:MyLayer)"
            ) from None
        raise ValueError(f"{spec!r}: importing {mod!r} failed: {e}") from e


def load_module_attribute(mod, attr, spec):
    """``mod:attr`` imported (a module name, or a path to a .py file); ``attr`` may be dotted.

    Raises ``ValueError`` naming what was not found.
    """
    if not mod or not attr:
        raise ValueError(f"{spec!r}: both the module and the attribute must be given")
    obj = _import(mod, spec)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = mod if i == 0 else f"{mod}:{'.'.join(attr.split('.')[:i])}"
            raise ValueError(f"{spec!r}: {where} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def load_target(spec):
    """Resolve ``"module:attribute"`` (or ``"path/to/file.py:attribute"``) to a layer or model.

    The attribute may be dotted (``module:ns.layer``). A class, or a zero-argument callable
    that is not itself a layer (``init``/``forward``/``backward``) or a model
    (``loss``/``loss_and_grad``), is called to get one. Raises ``ValueError`` with a message
    saying what is wrong: no colon, module or file not found, attribute not found, a factory
    that needs arguments, or an object that is neither a layer nor a model.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"expected 'module:attribute' or 'path/to/file.py:attribute', got {spec!r}"
        )
    mod, _, attr = spec.rpartition(":")
    obj = load_module_attribute(mod, attr, spec)
    if isinstance(obj, type) or (not (_is_layer(obj) or _is_model(obj)) and callable(obj)):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise ValueError(
                f"{spec!r} is a callable that needs arguments; point at a layer, a model, or "
                f"a zero-argument function that returns one"
            ) from None
        except ValueError:  # no signature available: just try
            pass
        obj = obj()
    if not (_is_layer(obj) or _is_model(obj)):
        raise ValueError(
            f"{spec!r} is a {type(obj).__name__}, neither a layer (init, forward, backward) "
            f"nor a model (loss, loss_and_grad)"
        )
    return obj


def _parse_shape(s):
    """A shape from a tuple or a string: ``"28,28"``, ``"28x28"``, ``"(3,)"``; several inputs
    separated by ``;``: ``"4;4"`` -> ``((4,), (4,))``."""
    if s is None:
        return None
    if isinstance(s, str):
        parts = []
        for part in s.split(";"):
            t = part.strip().strip("()[]").replace("x", ",")
            try:
                parts.append(tuple(int(v) for v in t.split(",") if v.strip()))
            except ValueError:
                raise ValueError(
                    f"in_shape must be integers like '28,28' (or '4;4' for two inputs), got {s!r}"
                ) from None
        return parts[0] if len(parts) == 1 else tuple(parts)
    return _shape_tree(s)


def _model_n_out(model, params, x):
    n = getattr(model, "n_out", None)
    if n is not None:
        return int(n)
    out = getattr(model, "out_shape", None)
    if out is not None:
        return int(_shape_tree(out)[-1])
    for name in ("apply", "predict", "forward", "logits"):
        fn = getattr(model, name, None)
        if callable(fn):
            try:
                o = jax.eval_shape(lambda p, xx, fn=fn: fn(p, xx), params, x)
                return int(jax.tree.leaves(o)[0].shape[-1])
            except Exception:  # noqa: BLE001 - try the next convention
                continue
    raise ValueError(
        "cannot tell the model's number of outputs: give it an n_out or out_shape attribute"
    )


def run_cli(spec, in_shape=None, batch=4, seed=0, as_json=False):
    """``jbp check module:attr``: check a layer or a model, print the table; exit status.

    For a layer ``in_shape`` (a tuple of ints, or a string like ``"28,28"``) is required.
    For a model, x ~ N(0, 1) of shape ``(batch, *in_shape)`` (``in_shape`` defaults to
    ``model.in_shape``) and y
    integer labels in [0, n_out) with n_out from ``model.n_out``, ``model.out_shape`` or the
    output of ``model.apply``/``predict``/``forward``. With ``as_json`` the last line printed
    is ``json.dumps(report.to_dict())``.

    Returns:
      0 when every check passes, 1 otherwise.
    """
    obj = load_target(spec)
    key = jax.random.PRNGKey(seed)
    shape = _parse_shape(in_shape)
    if _is_model(obj):
        with _enable_x64():
            if shape is None:  # an explicit in_shape wins over the model's
                shape = _parse_shape(getattr(obj, "in_shape", None))
            if shape is None:
                raise ValueError(
                    f"{spec!r} is a model without an in_shape attribute: give one (jbp check "
                    f"--in-shape 28,28,1; in_shape= from Python)"
                )
            rng = _rng(key, 12345)
            x = _draw_input(rng, shape, batch, jnp.float64)
            params, _ = obj.initialize(key, jnp.float64)
            n_out = _model_n_out(obj, params, x)
            y = jnp.asarray(rng.integers(0, n_out, batch))
        report = check_model(obj, x, y, key=key)
    else:
        if shape is None:
            raise ValueError(
                f"{spec!r} is a layer: give its input shape without the batch axis "
                f"(jbp check --in-shape 28,28,1; in_shape=(28, 28, 1) from Python)"
            )
        report = check_layer(obj, shape, batch=batch, key=key)
    print(report.table())
    if as_json:
        print(json.dumps(report.to_dict()))
    return 0 if report.ok else 1
