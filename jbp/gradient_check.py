"""Gradient checking: the hand-written backward against ``jax.grad`` and finite differences.

For every layer and parameter the report gives the relative difference

    rel(a, b) = ‖a − b‖₂ / (‖a‖₂ + ‖b‖₂)          (0 when both are 0)

between the manual gradient and (i) ``jax.grad(net.loss)``, (ii) finite differences.
Central differences ∂C/∂θₖ ≈ (C(θ + h eₖ) − C(θ − h eₖ)) / 2h cost 2n loss evaluations for
n parameters; forward differences (C(θ + h eₖ) − C(θ)) / h cost n + 1 — the seed's point
is that back-propagation gets all n derivatives for about one forward and one backward
pass. The perturbations are evaluated with ``vmap`` inside ``jit``, in chunks
(``lax.map(..., batch_size=chunk)``), never with a Python loop per weight.

Run it in float64 (``jax.config.update("jax_enable_x64", True)``): in float32, rounding
error (≈ eps/h) swamps the truncation error and finite differences agree to ~1e-3 only.

A big network makes finite differences slow (2n loss evaluations for n parameters):
``gradcheck(..., coordinates=N, key=)`` differentiates N random coordinates only, and the
report says it checked a subset. ``jbp gradcheck`` first prints how many loss evaluations
the finite differences will take and an estimate of their time (from one timed loss
evaluation), and warns above :data:`SLOW_SECONDS`, suggesting ``--coordinates``.
"""

import dataclasses
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jbp.util import integer, rel_diff  # noqa: F401 - rel_diff re-exported

#: thresholds of the textbook / the project (float64)
AUTODIFF_TOL = 1e-10
FD_TOL = 1e-7
#: ``jbp gradcheck`` warns when the finite differences are estimated to take longer
SLOW_SECONDS = 60.0
#: perturbed copies of the parameters one vectorised chunk may hold (elements)
CHUNK_ELEMENTS = 2**25


@dataclasses.dataclass
class Row:
    layer: int  # 1-based, as in the seed's Wˡ (0: the leaf is not in a list of layers)
    param: str  # "W", "b", or the leaf's path inside its layer
    shape: tuple
    rel_autodiff: float
    rel_fd: float | None  # None: no coordinate of this leaf among a subset's


@dataclasses.dataclass
class Report:
    """What ``gradcheck`` found; ``ok`` is true when every difference is under its tolerance."""

    rows: list
    n_params: int
    rel_autodiff: float  # over all parameters at once
    rel_fd: float
    fd_method: str
    fd_evals: int  # loss evaluations the finite differences used
    backprop_evals: str  # what the manual gradient cost
    seconds_manual: float
    seconds_autodiff: float
    seconds_fd: float
    dtype: str
    autodiff_tol: float = AUTODIFF_TOL
    fd_tol: float = FD_TOL
    fd_coordinates: int | None = None  # finite differences on this many random coordinates;
    # None: on every parameter

    @property
    def fd_subset(self):
        """True when the finite differences covered a random subset of the coordinates."""
        return self.fd_coordinates is not None

    @property
    def ok(self):
        return self.rel_autodiff < self.autodiff_tol and self.rel_fd < self.fd_tol

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["ok"], d["fd_subset"] = self.ok, self.fd_subset
        return d

    def table(self):
        """A readable text table."""
        lines = [
            f"{'layer':>5} {'param':>5} {'shape':>12} {'manual vs jax.grad':>19} "
            f"{'manual vs FD':>13}"
        ]
        for r in self.rows:
            fd = "-" if r.rel_fd is None else f"{r.rel_fd:.3e}"
            lines.append(
                f"{r.layer:>5} {r.param:>5} {str(tuple(r.shape)):>12} {r.rel_autodiff:>19.3e} "
                f"{fd:>13}"
            )
        lines.append(
            f"{'all':>5} {'':>5} {self.n_params:>12} {self.rel_autodiff:>19.3e} "
            f"{self.rel_fd:>13.3e}"
        )
        lines.append(
            f"tolerances: jax.grad < {self.autodiff_tol:g}, finite differences < {self.fd_tol:g} "
            f"({self.dtype}) -> {'PASS' if self.ok else 'FAIL'}"
        )
        lines.append(
            f"cost: backprop {self.backprop_evals} in {self.seconds_manual * 1e3:.3f} ms; "
            f"jax.grad {self.seconds_autodiff * 1e3:.3f} ms; {self.fd_method} finite "
            f"differences {self.fd_evals} loss evaluations in {self.seconds_fd * 1e3:.3f} ms"
        )
        if self.fd_subset:
            lines.append(
                f"finite differences on a random subset: {self.fd_coordinates} of "
                f"{self.n_params} coordinates (manual vs jax.grad: all of them)"
            )
        return "\n".join(lines)


def fd_evals(n, method):
    """Loss evaluations of finite differences over ``n`` coordinates."""
    return 2 * n if method == "central" else n + 1


def finite_differences(f, flat, *, method="central", eps=None, chunk=256, indices=None):
    """∇f at ``flat`` (1-D) by finite differences; returns ``(grad, loss_evaluations)``.

    ``indices``: differentiate only these coordinates (``grad`` then has one entry per
    index). A chunk holds at most :data:`CHUNK_ELEMENTS` perturbed values, so a big network
    is differentiated in smaller chunks rather than running out of memory.
    """
    if method not in ("central", "forward"):
        raise ValueError(f"method must be 'central' or 'forward', got method={method!r}")
    n = flat.shape[0]
    ks = jnp.arange(n) if indices is None else jnp.asarray(indices)
    m = int(ks.shape[0])
    if eps is None:  # balance truncation against rounding error for the dtype
        fin = jnp.finfo(flat.dtype).eps
        eps = float(fin ** (1 / 3) if method == "central" else fin**0.5)
    eye = lambda k: jax.nn.one_hot(k, n, dtype=flat.dtype) * eps  # noqa: E731
    size = max(1, min(chunk, m, CHUNK_ELEMENTS // max(n, 1)))

    @jax.jit
    def run(flat, ks):
        if method == "central":
            d = jax.lax.map(lambda k: f(flat + eye(k)) - f(flat - eye(k)), ks, batch_size=size)
            return d / (2 * eps)
        f0 = f(flat)
        d = jax.lax.map(lambda k: f(flat + eye(k)) - f0, ks, batch_size=size)
        return d / eps

    grad = run(flat, ks).block_until_ready()
    return grad, fd_evals(m, method)


def _timed(fn, *args, repeat=3):
    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return out, best


def _leaf_label(path):
    """``(layer, param)`` of a leaf: ``[1]["W"]`` -> (2, "W"); layer 0 when there is no index."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    for i, k in enumerate(path):
        if isinstance(k, jax.tree_util.SequenceKey):
            return k.idx + 1, "/".join(names[:i] + names[i + 1 :]) or "-"
    return 0, "/".join(names) or "-"


def gradcheck(net, params, x, y, *, method="central", eps=None, chunk=256, coordinates=None,
              key=None):  # fmt: skip
    """Compare ``net.loss_and_grad`` with ``jax.grad(net.loss)`` and finite differences.

    Args:
      net: a ``jbp.MLP`` or any model with ``loss``, ``loss_and_grad`` and ``check_params``
        (a :class:`jbp.Network`; :func:`jbp.check_model` adds per-leaf directions, kinks and
        more); params: its parameters; x, y: a batch.
      method: ``"central"`` (2n evaluations, O(h²) error) or ``"forward"`` (n + 1, O(h)).
      eps: the step h; by default eps_mach^(1/3) (central) or eps_mach^(1/2) (forward).
      chunk: how many perturbations one vectorised evaluation handles.
      coordinates: finite differences on this many coordinates, drawn at random (without
        replacement) with ``key`` (default ``jax.random.key(0)``); ``None`` or at least the
        number of parameters: all of them. The jax.grad comparison always covers all.

    Returns:
      a :class:`Report` (``report.ok``, ``report.table()``, ``report.to_dict()``;
      ``report.fd_subset`` says whether the finite differences covered a subset).
    """
    net.check_params(params)
    manual = jax.jit(lambda p: net.loss_and_grad(p, x, y)[1])
    auto = jax.jit(jax.grad(lambda p: net.loss(p, x, y)))
    g_manual, t_manual = _timed(manual, params)
    g_auto, t_auto = _timed(auto, params)

    flat, unravel = ravel_pytree(params)
    idx = subset(flat.shape[0], coordinates, key)
    loss_flat = lambda v: net.loss(unravel(v), x, y)  # noqa: E731
    t0 = time.perf_counter()
    g_fd, evals = finite_differences(
        loss_flat, flat, method=method, eps=eps, chunk=chunk, indices=idx
    )
    t_fd = time.perf_counter() - t0  # includes compilation: FD is run once
    flat_m = ravel_pytree(g_manual)[0]
    return Report(
        rows=_rows(g_manual, g_auto, g_fd, idx, unravel),
        n_params=int(flat.shape[0]),
        rel_autodiff=rel_diff(flat_m, ravel_pytree(g_auto)[0]),
        rel_fd=rel_diff(flat_m if idx is None else flat_m[idx], g_fd),
        fd_method=method,
        fd_evals=evals,
        backprop_evals="1 forward + 1 backward pass",
        seconds_manual=t_manual,
        seconds_autodiff=t_auto,
        seconds_fd=t_fd,
        dtype=str(flat.dtype),
        fd_coordinates=None if idx is None else len(idx),
    )


def subset(n, coordinates, key=None):
    """``coordinates`` distinct random indices into ``n`` parameters, sorted (drawn with
    ``key``, default ``jax.random.key(0)``); ``None`` for all of them."""
    if coordinates is None:
        return None
    integer("coordinates", coordinates)
    if coordinates >= n:
        return None
    key = jax.random.key(0) if key is None else key
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    return np.sort(rng.choice(n, size=int(coordinates), replace=False))


def _rows(g_manual, g_auto, g_fd, idx, unravel):
    """One :class:`Row` per leaf; with a subset, each leaf's finite differences over the
    sampled coordinates that fall in it (``None`` if none do)."""
    paths = jax.tree_util.tree_flatten_with_path(g_manual)[0]
    autos = jax.tree.leaves(g_auto)
    if idx is None:
        fds = jax.tree.leaves(unravel(g_fd))
    else:
        flat_m, fds, start = ravel_pytree(g_manual)[0], [], 0
        for _, pm in paths:
            sel = (idx >= start) & (idx < start + pm.size)
            fds.append((flat_m[idx[sel]], g_fd[sel]) if sel.any() else None)
            start += pm.size
    rows = []
    for (path, pm), pa, pf in zip(paths, autos, fds, strict=True):
        layer, param = _leaf_label(path)
        fd = None if pf is None else (rel_diff(pm, pf) if idx is None else rel_diff(*pf))
        rows.append(Row(layer, param, tuple(pm.shape), rel_diff(pm, pa), fd))
    return rows


def run_cli(args):
    """``jbp gradcheck``: a random MLP and batch from the flags, the report, exit 0 / 1.

    Before any work, the cost is said: the loss evaluations finite differences will take and
    an estimate of their time; above :data:`SLOW_SECONDS`, a warning on stderr suggests
    ``--coordinates N``. A network whose float64 parameters and gradients cannot fit in
    memory is refused (``ValueError``) before it is built.
    """
    jax.config.update("jax_enable_x64", True)
    from jbp import mlp

    net = mlp.MLP(_sizes(args), _activation(args.activation), args.output, args.cost)
    coords = getattr(args, "coordinates", None)
    _check_memory(net.n_params, args.batch, net.sizes)
    print(f"jbp gradcheck: sizes {net.sizes}, {args.activation}/{args.output}/{args.cost}, "
          f"batch {args.batch}", flush=True)  # fmt: skip
    params, x, y = _case(net, args)
    _announce(net, params, x, y, args.method, coords)
    rep = gradcheck(net, params, x, y, method=args.method, coordinates=coords,
                    key=jax.random.key(args.seed))  # fmt: skip
    print(rep.table())
    if args.json:
        d = rep.to_dict()
        d.update(sizes=list(net.sizes), activation=args.activation, output=args.output,
                 cost=args.cost, batch=args.batch)  # fmt: skip
        print(json.dumps(d))
    return 0 if rep.ok else 1


def _sizes(args):
    from jbp import flags

    return tuple(flags.int_list("--layers", args.layers))


def _activation(text):
    return tuple(a.strip() for a in text.split(",")) if "," in text else text


def _check_memory(n_params, batch, sizes):
    """Parameters, three gradients and the flat copies (float64), and the batch's
    activations: refused with the estimate if that cannot fit."""
    from jbp import memory

    need = 8 * (6 * n_params + 4 * batch * sum(sizes))
    memory.check_bytes(need, f"gradcheck's {n_params:,} float64 parameters and their gradients")


def _case(net, args):
    """The random parameters (biases not zero), inputs and targets of the check."""
    sizes = net.sizes
    k1, k2, k3 = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init(k1, jnp.float64)
    params = [
        dict(p, b=0.1 * jax.random.normal(k, p["b"].shape, jnp.float64))
        for p, k in zip(params, jax.random.split(k3, len(params)), strict=True)
    ]
    x = jax.random.normal(k2, (args.batch, sizes[0]), jnp.float64)
    if args.output == "identity":
        y = jax.random.normal(k3, (args.batch, sizes[-1]), jnp.float64)
    elif args.output == "sigmoid" and sizes[-1] > 1:
        y = jax.random.bernoulli(k3, 0.5, (args.batch, sizes[-1])).astype(jnp.float64)
    else:
        y = jax.random.randint(k3, (args.batch,), 0, net.n_classes)
    return params, x, y


def _announce(net, params, x, y, method, coordinates):
    """Print the finite differences' cost before paying it; warn when it is long."""
    n = net.n_params
    m = n if coordinates is None else min(int(coordinates), n)
    evals = fd_evals(m, method)
    loss = jax.jit(lambda p: net.loss(p, x, y))
    _, one = _timed(loss, params)
    estimate = evals * one
    which = f"{m:,} random coordinates of {n:,}" if m < n else f"all {n:,} parameters"
    print(f"finite differences: {evals:,} loss evaluations ({method}, {which}), estimated "
          f"{_duration(estimate)}", flush=True)  # fmt: skip
    if estimate > SLOW_SECONDS:
        hint = "" if m < n else "; --coordinates N checks N random ones"
        print(f"jbp gradcheck: warning: finite differences will take about {_duration(estimate)}"
              f"{hint}", file=sys.stderr, flush=True)  # fmt: skip
    return evals, estimate


def _duration(seconds):
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
