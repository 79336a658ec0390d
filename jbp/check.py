"""Check any layer's (or model's) hand-written backward: ``check_layer``, ``check_model``.

A layer (the contract of :mod:`jbp.layers`) has ``init(key, in_shape, dtype) -> (params,
state, out_shape)``, ``forward(params, state, x, *, train, key) -> (y, cache, new_state)`` and
``backward(params, cache, dy) -> (dparams, dx)``, a plain vector–Jacobian product. Everything
runs in float64 inside ``with jax.enable_x64(True)`` (the caller need not set the global flag),
with parameters drawn *away* from their initial values (p + ½·rms(p)·N(0, 1): γ ≠ 1, β ≠ 0,
biases ≠ 0, so a backward that forgets a term that vanishes at init is still seen) and
x ~ N(0, 1). The report (:class:`LayerReport`) has one row per leaf of ``params`` and of ``x``
(:mod:`jbp.check_leaves`):

- **backward vs** ``jax.vjp`` of the layer's own forward (same state, ``train``, key), for
  several random cotangents dy, relative difference ‖a − b‖₂/(‖a‖₂ + ‖b‖₂) < 1e-10;
- **finite differences** of ⟨dy, y⟩ along one random unit direction **per leaf** (only that
  leaf moves), Richardson-extrapolated (:mod:`jbp.check_fd`), compared with ⟨backward's
  gradient, direction⟩: |a − b|/(|a| + |b|) < 1e-7. Per leaf, because one direction over all
  leaves lets a wrong *small* leaf (a bias) hide beside a big one (a weight);

and whole-layer checks (``report.checks``: name -> ``Check(ok, detail)``; the details are in
:mod:`jbp.check_props`): ``structure`` (dparams and dx match params and x), ``forward_shape``
(y matches ``init``'s ``out_shape``), ``stochastic_flag`` (a layer with ``stochastic = False``
ignores its key), ``linear_in_dy``, ``zero_dy``, ``deterministic`` (eager and jitted calls
repeat bit for bit), ``eager_vs_jit`` (< 1e-12), ``vmap_vs_loop`` (< 1e-12) and
``batch_independent`` (layers with ``batch_coupled = False``: the batch backward is the sum
and concatenation of one-example backwards).

Stochastic layers get the same key for forward, ``jax.vjp``, finite differences and backward.
Kinks: when a row fails and a leaf's difference quotients show a non-differentiable point
(relu at exactly 0, tied maxima of a pool), or finite differences disagree with ``jax.vjp``
while ``jax.vjp`` agrees with the backward, x and the parameters are redrawn (a given x or
given params are jittered by 0.1·rms), up to ``redraws`` times; ``report.kinks_redrawn``
counts them.

``check_grid`` checks a layer factory over a grid of hyperparameters (a backward that is right
for one stride or padding only passes a single configuration). ``check_model`` does the same
for a whole model (``loss_and_grad`` vs ``jax.grad(loss)`` and per-leaf finite differences).
``run_cli`` backs ``jbp check module:attr`` (targets resolved by :mod:`jbp.check_targets`).

Cost: random draws are made in numpy and the layer's functions are jitted with the layer as
a static argument (:mod:`jbp.check_fns`), so a check compiles a handful of programs (plus the
layer's own eager ops, which the eager-vs-jit check needs) and a second check of an equal
layer reuses them.
"""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np

from jbp.check_fns import LayerFns, ModelFns
from jbp.check_leaves import layer_point, model_point, redraw_kinks
from jbp.check_props import layer_checks
from jbp.check_report import AUTODIFF_TOL, FD_TOL, IMPL_TOL, Check, LayerReport, Row
from jbp.check_targets import (
    is_model,
    load_module_attribute,
    load_target,
    model_batch,
    parse_shape,
)
from jbp.check_trees import (
    cast,
    describe,
    draw_input,
    enable_x64,
    is_float,
    jitter,
    named,
    numpy_rng,
    param_name,
    perturb,
    rel_diff,
    shape_tree,
    x_name,
)
from jbp.util import integer

__all__ = [
    "AUTODIFF_TOL",
    "FD_TOL",
    "IMPL_TOL",
    "Check",
    "LayerReport",
    "Row",
    "check_grid",
    "check_layer",
    "check_model",
    "load_module_attribute",
    "load_target",
    "rel_diff",
    "run_cli",
]

_VJP_DISAGREES = (
    "finite differences disagree with jax.vjp on {} while jax.vjp agrees with the backward"
)
_GRAD_DISAGREES = "finite differences disagree with jax.grad on {}"


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
    message = f"cotangents must be >= 1, got cotangents={cotangents}"
    cotangents = integer("cotangents", cotangents, message=message)
    args = (layer, in_shape, batch, key, dtype, train, cotangents, x, params, state, redraws,
            autodiff_tol, fd_tol, impl_tol)  # fmt: skip
    with enable_x64():
        report = _check_layer(*args)
        if train and getattr(layer, "batch_coupled", False) and report.batch >= 2:
            # as a ragged last batch runs it: the last row is padding (mask 0)
            mask = np.ones(report.batch, jnp.dtype(dtype))
            mask[-1] = 0
            report = _with_masked(report, _check_layer(*args, mask=mask))
    return report


def _with_masked(report, masked):
    """One report of the unmasked and the masked check (its rows and checks marked so)."""
    rows = [dataclasses.replace(r, name=f"{r.name} (masked)") for r in masked.rows]
    checks = {f"{n} (masked)": c for n, c in masked.checks.items()}
    notes = [*report.notes, "a batch-coupled layer: checked again with its last row masked out"]
    return dataclasses.replace(
        report, rows=report.rows + rows, checks={**report.checks, **checks}, notes=notes
    )


def _check_layer(layer, in_shape, batch, key, dtype, train, cotangents, x, params, state,
                 redraws, autodiff_tol, fd_tol, impl_tol, mask=None):  # fmt: skip
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, fkey = jax.random.split(key)  # fkey: forward, vjp, FD and backward share it
    shapes = shape_tree(in_shape)
    if x is not None:
        x = cast(x, dtype)
        batch = int(jax.tree.leaves(x)[0].shape[0])
    p_init, s_init, out_shape = layer.init(k_init, shapes, dtype)
    p_init = cast(p_init, dtype)
    fns = LayerFns(layer, cast(s_init if state is None else state, dtype), fkey, train, mask)
    params = None if params is None else cast(params, dtype)

    def at(attempt):  # draw 0 takes given values as they are; later draws jitter them
        rng = numpy_rng(key, attempt)
        p = perturb(rng, p_init, 0.5) if params is None else jitter(rng, attempt, params)
        xa = draw_input(rng, shapes, batch, dtype) if x is None else jitter(rng, attempt, x)
        return layer_point(layer, fns, p, xa, rng, cotangents, dtype, autodiff_tol, fd_tol)

    pt, notes, redrawn = redraw_kinks(at, redraws, autodiff_tol, fd_tol, _VJP_DISAGREES)
    return LayerReport(
        target=describe(layer),
        kind="layer",
        rows=pt.rows,
        checks=layer_checks(layer, fns, pt, out_shape, autodiff_tol, impl_tol),
        kinks_redrawn=redrawn,
        dtype=str(jnp.dtype(dtype)),
        autodiff_tol=autodiff_tol,
        fd_tol=fd_tol,
        impl_tol=impl_tol,
        batch=batch,
        cotangents=cotangents,
        reference="jax.vjp",
        notes=_not_differentiated(p_init, x) + notes,
    )


def _not_differentiated(params, x):
    """A note for the parameter and input leaves that are not floating (no gradient)."""
    notes = []
    for kind, tree, namer in (("param", params, param_name), ("input", x, x_name)):
        skipped = [n for n, v in named(tree, namer) if v is not None and not is_float(v)]
        if skipped:
            notes.append(f"{kind} leaves {', '.join(skipped)} are not floating: not differentiated")
    return notes


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
    with enable_x64():
        return _check_model(model, x, y, params, state, key, mask, train, dtype, redraws,
                            autodiff_tol, fd_tol, impl_tol)  # fmt: skip


def _check_model(model, x, y, params, state, key, mask, train, dtype, redraws,
                 autodiff_tol, fd_tol, impl_tol):  # fmt: skip
    key = jax.random.PRNGKey(0) if key is None else key
    k_init, k_fwd = jax.random.split(key)
    x = cast(x, dtype)
    mask = None if mask is None else cast(mask, dtype)
    p0, state = _model_params(model, params, state, k_init, dtype)
    fns = ModelFns(model, x, y, mask, state, train, k_fwd)

    def at(attempt):  # given params: as they are, then jittered; else moved from init
        rng = numpy_rng(key, attempt)
        p = perturb(rng, p0, 0.5) if params is None else jitter(rng, attempt, p0)
        return model_point(fns, p, rng, dtype, autodiff_tol, fd_tol, impl_tol)

    pt, notes, redrawn = redraw_kinks(at, redraws, autodiff_tol, fd_tol, _GRAD_DISAGREES)
    return LayerReport(
        target=describe(model),
        kind="model",
        rows=pt.rows,
        checks=pt.checks,
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


def _model_params(model, params, state, k_init, dtype):
    """(params, state) cast to ``dtype``; what is not given comes from ``model.initialize``."""
    if params is not None and state is not None:
        return cast(params, dtype), cast(state, dtype)
    p_init, s0 = model.initialize(k_init, dtype)
    params = cast(p_init if params is None else params, dtype)
    return params, cast(s0 if state is None else state, dtype)


# ----------------------------------------------------------------------------- CLI
def run_cli(spec, in_shape=None, batch=4, seed=0, as_json=False):
    """``jbp check module:attr``: check a layer or a model, print the table; exit status.

    For a layer ``in_shape`` (a tuple of ints, or a string like ``"28,28"``) is required.
    For a model, x ~ N(0, 1) of shape ``(batch, *in_shape)`` (``in_shape`` defaults to
    ``model.in_shape``) and y integer labels in [0, n_out) with n_out from ``model.n_out``,
    ``model.out_shape`` or the output of ``model.apply``/``predict``/``forward``. With
    ``as_json`` the last line printed is ``json.dumps(report.to_dict())``.

    Returns:
      0 when every check passes, 1 otherwise.
    """
    obj = load_target(spec)
    key = jax.random.PRNGKey(seed)
    shape = parse_shape(in_shape)
    if is_model(obj):
        x, y = model_batch(obj, spec, shape, batch, key)
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
