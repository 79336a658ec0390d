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
"""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jbp.util import rel_diff  # noqa: F401 - re-exported

#: thresholds of the textbook / the project (float64)
AUTODIFF_TOL = 1e-10
FD_TOL = 1e-7


@dataclasses.dataclass
class Row:
    layer: int  # 1-based, as in the seed's Wˡ (0: the leaf is not in a list of layers)
    param: str  # "W", "b", or the leaf's path inside its layer
    shape: tuple
    rel_autodiff: float
    rel_fd: float


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

    @property
    def ok(self):
        return self.rel_autodiff < self.autodiff_tol and self.rel_fd < self.fd_tol

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        return d

    def table(self):
        """A readable text table."""
        lines = [
            f"{'layer':>5} {'param':>5} {'shape':>12} {'manual vs jax.grad':>19} "
            f"{'manual vs FD':>13}"
        ]
        for r in self.rows:
            lines.append(
                f"{r.layer:>5} {r.param:>5} {str(tuple(r.shape)):>12} {r.rel_autodiff:>19.3e} "
                f"{r.rel_fd:>13.3e}"
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
        return "\n".join(lines)


def finite_differences(f, flat, *, method="central", eps=None, chunk=256):
    """∇f at ``flat`` (1-D) by finite differences; returns ``(grad, loss_evaluations)``."""
    if method not in ("central", "forward"):
        raise ValueError(f"method must be 'central' or 'forward', got method={method!r}")
    n = flat.shape[0]
    if eps is None:  # balance truncation against rounding error for the dtype
        fin = jnp.finfo(flat.dtype).eps
        eps = float(fin ** (1 / 3) if method == "central" else fin**0.5)
    eye = lambda k: jax.nn.one_hot(k, n, dtype=flat.dtype) * eps  # noqa: E731

    @jax.jit
    def run(flat):
        ks = jnp.arange(n)
        if method == "central":
            d = jax.lax.map(
                lambda k: f(flat + eye(k)) - f(flat - eye(k)), ks, batch_size=min(chunk, n)
            )
            return d / (2 * eps)
        f0 = f(flat)
        d = jax.lax.map(lambda k: f(flat + eye(k)) - f0, ks, batch_size=min(chunk, n))
        return d / eps

    grad = run(flat).block_until_ready()
    return grad, (2 * n if method == "central" else n + 1)


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


def gradcheck(net, params, x, y, *, method="central", eps=None, chunk=256):
    """Compare ``net.loss_and_grad`` with ``jax.grad(net.loss)`` and finite differences.

    Args:
      net: a ``jbp.MLP`` or any model with ``loss``, ``loss_and_grad`` and ``check_params``
        (a :class:`jbp.Network`; :func:`jbp.check_model` adds per-leaf directions, kinks and
        more); params: its parameters; x, y: a batch.
      method: ``"central"`` (2n evaluations, O(h²) error) or ``"forward"`` (n + 1, O(h)).
      eps: the step h; by default eps_mach^(1/3) (central) or eps_mach^(1/2) (forward).
      chunk: how many perturbations one vectorised evaluation handles.

    Returns:
      a :class:`Report` (``report.ok``, ``report.table()``, ``report.to_dict()``).
    """
    net.check_params(params)
    manual = jax.jit(lambda p: net.loss_and_grad(p, x, y)[1])
    auto = jax.jit(jax.grad(lambda p: net.loss(p, x, y)))
    g_manual, t_manual = _timed(manual, params)
    g_auto, t_auto = _timed(auto, params)

    flat, unravel = ravel_pytree(params)
    loss_flat = lambda v: net.loss(unravel(v), x, y)  # noqa: E731
    t0 = time.perf_counter()
    g_fd_flat, evals = finite_differences(loss_flat, flat, method=method, eps=eps, chunk=chunk)
    t_fd = time.perf_counter() - t0  # includes compilation: FD is run once
    g_fd = unravel(g_fd_flat)

    rows = []
    by_path = [jax.tree_util.tree_flatten_with_path(g)[0] for g in (g_manual, g_auto, g_fd)]
    leaves = zip(*by_path, strict=True)
    for (path, pm), (_, pa), (_, pf) in leaves:
        layer, param = _leaf_label(path)
        rows.append(Row(layer, param, tuple(pm.shape), rel_diff(pm, pa), rel_diff(pm, pf)))
    flat_m = ravel_pytree(g_manual)[0]
    return Report(
        rows=rows,
        n_params=int(flat.shape[0]),
        rel_autodiff=rel_diff(flat_m, ravel_pytree(g_auto)[0]),
        rel_fd=rel_diff(flat_m, g_fd_flat),
        fd_method=method,
        fd_evals=evals,
        backprop_evals="1 forward + 1 backward pass",
        seconds_manual=t_manual,
        seconds_autodiff=t_auto,
        seconds_fd=t_fd,
        dtype=str(flat.dtype),
    )


def run_cli(args):
    """``jbp gradcheck``: a random MLP and batch from the flags, the report, exit 0 / 1."""
    jax.config.update("jax_enable_x64", True)
    from jbp import flags, mlp

    sizes = flags.int_list("--layers", args.layers)
    act = (
        tuple(a.strip() for a in args.activation.split(","))
        if "," in args.activation
        else args.activation
    )
    net = mlp.MLP(tuple(sizes), act, args.output, args.cost)
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
    rep = gradcheck(net, params, x, y, method=args.method)
    print(
        f"jbp gradcheck: sizes {net.sizes}, {args.activation}/{args.output}/{args.cost}, batch {args.batch}"
    )
    print(rep.table())
    if args.json:
        d = rep.to_dict()
        d.update(
            sizes=list(net.sizes),
            activation=args.activation,
            output=args.output,
            cost=args.cost,
            batch=args.batch,
        )
        print(json.dumps(d))
    return 0 if rep.ok else 1
