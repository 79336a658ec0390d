"""Pytree helpers for the backward checks: leaf names, shapes, random points, comparisons.

- Names: a parameter leaf is named by its path joined with ``/`` (``"0/W"``, ``"params"`` for
  a bare array), an input leaf by ``"x"`` plus its key path (``"x"``, ``"x[1]"``).
- Shapes: ``in_shape`` is a tuple of ints, or a tuple of such shapes for a layer with
  several inputs (then x is a tuple of arrays).
- Random points are drawn in numpy from a Generator seeded by a JAX key, so drawing compiles
  nothing. A parameter point is moved away from its initial value, p + s·rms(p)·N(0, 1), so a
  backward that forgets a term vanishing at init (γ = 1, β = 0, zero biases) is still seen.
- Comparisons: ``rel_diff(a, b) = ‖a − b‖₂/(‖a‖₂ + ‖b‖₂)`` (scale-free, 0 for two zeros);
  :func:`leaf_diff`, the same except that two leaves both zero to rounding compare equal
  (a bias before a BatchNorm has gradient 0, computed as noise); bitwise identity, and the structure of a returned gradient against the tree it belongs to
  (each missing, extra, wrongly shaped or wrongly typed leaf named).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jbp.util import (
    key_name,
    rel_diff,  # noqa: F401 - re-exported
)

#: two gradient leaves whose norms add up to less than this many epsilons (of their dtype)
#: times the largest gradient leaf's norm are both zero to rounding
ZERO_ULPS = 256


def grad_scale(*trees):
    """The largest norm (float64) of the floating leaves of ``trees``: gradients' scale."""
    norms = [
        float(np.linalg.norm(np.ravel(np.asarray(v, np.float64))))
        for t in trees
        for v in jax.tree.leaves(t)
        if is_float(v)
    ]
    return max(norms, default=0.0)


def leaf_diff(a, b, scale):
    """:func:`rel_diff`, or 0 when ‖a‖ + ‖b‖ < ``ZERO_ULPS``·eps·``scale``: both are zero to
    rounding, whose relative difference means nothing (scale: :func:`grad_scale`)."""
    a, b = np.asarray(a), np.asarray(b)
    eps = max(_eps(a), _eps(b))
    norm = np.linalg.norm(np.ravel(a.astype(np.float64))) + np.linalg.norm(
        np.ravel(b.astype(np.float64))
    )
    return 0.0 if norm < ZERO_ULPS * eps * scale else rel_diff(a, b)


def _eps(a):
    return float(np.finfo(a.dtype).eps) if np.issubdtype(a.dtype, np.floating) else 0.0


def enable_x64():
    """A context in which JAX computes in float64 (the global flag is left as it is)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older JAX
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


def is_float(a):
    """An array with a floating dtype (the leaves that get gradients)."""
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)


def param_name(path):
    """A parameter leaf's name: its path keys joined by ``/``."""
    return "/".join(key_name(k) for k in path) or "params"


def x_name(path):
    """An input leaf's name: ``x`` and its key path."""
    return "x" + jax.tree_util.keystr(path)


def named(tree, namer, none_leaf=False):
    """``[(name, leaf)]`` in tree order; ``none_leaf``: a ``None`` counts as a leaf."""
    is_leaf = (lambda v: v is None) if none_leaf else None
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(namer(p), v) for p, v in flat]


def shape_tree(s):
    """``(3, 4)`` -> a shape; ``((3,), (4,))`` -> a tuple of shapes; ``5`` -> ``(5,)``."""
    if isinstance(s, (int, np.integer)):
        return (int(s),)
    if isinstance(s, (tuple, list)):
        if all(isinstance(d, (int, np.integer)) for d in s):
            return tuple(int(d) for d in s)
        return tuple(shape_tree(e) for e in s)
    raise ValueError(f"a shape must be a tuple of ints or a tuple of shapes, got {s!r}")


def shape_leaves(s):
    """The shapes in a (normalised) shape tree, in order."""
    if isinstance(s, tuple) and all(isinstance(d, int) for d in s):
        return [s]
    return [leaf for e in s for leaf in shape_leaves(e)]


def numpy_rng(key, *salt):
    """A numpy Generator seeded from a JAX key (drawing in numpy compiles nothing)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([int(w) for w in np.asarray(key).ravel()] + list(salt))


def draw_input(rng, shapes, batch, dtype):
    """x ~ N(0, 1) of shape ``(batch, *shape)``, a tuple of them for a tuple of shapes."""
    if all(isinstance(d, int) for d in shapes):
        return jnp.asarray(rng.standard_normal((batch, *shapes)), dtype)
    return tuple(draw_input(rng, s, batch, dtype) for s in shapes)


def cast(tree, dtype):
    """Every floating leaf as ``dtype``; other leaves as they are."""
    return jax.tree.map(lambda v: jnp.asarray(v, dtype) if is_float(v) else v, tree)


def rms(v):
    """Root mean square of an array (0 for an empty one)."""
    v = np.asarray(v, np.float64)
    return float(np.sqrt(np.mean(np.square(v)))) if v.size else 0.0


def perturb(rng, tree, scale):
    """Every floating leaf p -> p + scale·(rms(p) or 1)·N(0, 1)."""

    def move(v):
        if not is_float(v) or not v.size:
            return v
        step = scale * (rms(v) or 1.0) * rng.standard_normal(v.shape)
        return jnp.asarray(np.asarray(v, np.float64) + step, v.dtype)

    return jax.tree.map(move, tree)


def jitter(rng, attempt, tree):
    """A given point for draw ``attempt``: as it is first, then jittered by 0.1·rms."""
    return tree if attempt == 0 else perturb(rng, tree, 0.1)


def normal_like(rng, tree):
    """N(0, 1) draws with the shapes and dtypes of ``tree``'s leaves."""
    return jax.tree.map(lambda v: jnp.asarray(rng.standard_normal(v.shape), v.dtype), tree)


def take(tree, i):
    """Example i (keeping the batch axis), sliced in numpy: no compilation per index."""
    return jax.tree.map(lambda v: jnp.asarray(np.asarray(v)[i : i + 1]), tree)


def like(a, v):
    """numpy ``a`` as a JAX array of ``v``'s dtype."""
    return jnp.asarray(np.asarray(a, v.dtype))


def to_numpy(tree):
    """Every leaf as a numpy array."""
    return jax.tree.map(np.asarray, tree)


def identical(a, b):
    """Same shape, dtype and bits."""
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def structure_problems(got, ref, namer, what):
    """Messages for every leaf of ``got`` whose presence, shape or dtype differs from ``ref``."""
    ref_items = named(ref, namer)
    got_items = named(got, namer, none_leaf=True)
    if not ref_items and all(v is None for _, v in got_items):
        return []
    rd, gd = dict(ref_items), dict(got_items)
    problems = [f"{what}: leaf {n!r} is missing" for n in rd if n not in gd]
    problems += [f"{what}: unexpected leaf {n!r}" for n in gd if n not in rd]
    for n, r in rd.items():
        if n in gd and is_float(r):
            problems += _leaf_problems(gd[n], r, n, what)
    if not problems:
        tg = jax.tree.structure(got, is_leaf=lambda v: v is None)
        tr = jax.tree.structure(ref)
        if tg != tr:
            problems.append(f"{what}: container types differ: got {tg}, expected {tr}")
    return problems


def _leaf_problems(g, r, n, what):
    if g is None or not hasattr(g, "shape"):
        return [f"{what}: leaf {n!r} is {type(g).__name__}, expected an array"]
    if tuple(g.shape) != tuple(r.shape):
        return [f"{what}: leaf {n!r} has shape {tuple(g.shape)}, expected {tuple(r.shape)}"]
    if g.dtype != r.dtype:
        return [f"{what}: leaf {n!r} has dtype {g.dtype}, expected {r.dtype}"]
    return []


def usable(got, ref, namer):
    """name -> leaf of ``got`` that matches ``ref``'s leaf in shape (others left out)."""
    try:
        gd = dict(named(got, namer, none_leaf=True))
    except Exception:  # noqa: BLE001 - an odd object is simply unusable
        return {}
    out = {}
    for n, r in named(ref, namer):
        g = gd.get(n)
        if is_float(r) and hasattr(g, "shape") and tuple(g.shape) == tuple(r.shape):
            out[n] = g
    return out


def split_arrays(tree):
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


def worst_leaf(fn, trees_a, trees_b, names):
    """max over leaves of fn(a, b); returns (value, worst leaf name)."""
    worst, name = 0.0, ""
    for n in names:
        v = fn(trees_a[n], trees_b[n])
        if not v <= worst:  # NaN counts as worst
            worst, name = v, n
            if math.isnan(v):
                break
    return worst, name


def short(s, n=200):
    """``s`` on one line, cut to ``n`` characters."""
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def describe(obj):
    """A short name for a checked object: its ``name``, else its repr or class name."""
    name = getattr(obj, "name", None)
    s = name if isinstance(name, str) and name else repr(obj)
    if s.startswith("<") and " object at 0x" in s:  # the default repr says nothing
        s = type(obj).__name__
    return short(s, 80)
