"""Backprop vs finite differences: what one gradient costs.

Claim (seed chapter; Nielsen, *Neural Networks and Deep Learning*, ch. 2, "In what sense is
backpropagation a fast algorithm?"): estimating ∂C/∂wₖ by finite differences needs one extra
evaluation of C per weight — n + 1 evaluations (forward differences) or 2n (central) for n
weights — while back-propagation gets all n partial derivatives for about the cost of one
forward and one backward pass. The "cheap gradient principle" (Griewank & Walther,
*Evaluating Derivatives*, 2008, §4.6; Baur & Strassen 1983) bounds the ratio
time(gradient)/time(function) by a small constant, ≤ ~3–5, independent of n.

For networks from ~10 to ~10⁵ weights this script
  * counts the loss evaluations ``jbp.gradient_check.finite_differences`` really performs (a
    ``jax.debug.callback`` inside the loss ticks once per evaluation, vmapped or not),
  * checks that its gradient matches the hand-written backward (central: rel. diff < 1e-7),
  * times forward, manual backprop, ``jax.grad`` and both finite-difference schemes (all
    jitted, compile excluded, best of several repeats). Finite differences on the largest
    networks would take minutes, so above ``fd_full_max`` weights their time is measured on
    ``fd_sample`` perturbed coordinates and scaled by n / fd_sample (each evaluation costs
    the same; the plot marks these points hollow).

Run: ``python -m experiments.backprop_cost [--quick] [--out DIR]``.
"""

import dataclasses
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import jbp
from experiments import common
from jbp.gradient_check import finite_differences, rel_diff

NAME = "backprop_cost"


@dataclasses.dataclass(frozen=True)
class Config:
    # layer widths of the networks, ~10 to ~1e5 weights (17, 58, 340, 2762, 9610, 35594, 134154)
    sizes: tuple = (
        (2, 3, 2),
        (4, 8, 2),
        (16, 16, 4),
        (32, 64, 10),
        (64, 128, 10),
        (128, 256, 10),
        (256, 256, 256, 10),
    )
    batch: int = 64  # examples in the batch C is averaged over
    count_max: int = 3_000  # count evaluations exactly (debug callback) up to this many weights
    time_fd: bool = True  # time the finite-difference sweeps (compiles two more programs per net)
    fd_full_max: int = 3_000  # time finite differences on every weight up to this many
    fd_sample: int = 1024  # coordinates timed above fd_full_max, scaled by n / fd_sample
    chunk: int = 256  # perturbations evaluated together (vmap) by finite differences
    repeats: int = 5  # timing: best of this many runs
    seed: int = 0  # PRNG seed for parameters and the batch


# CI: the counts and the agreement on three small nets; no FD timing (compiling is the cost)
QUICK = Config(sizes=((2, 3, 2), (4, 8, 2), (16, 16, 4)), batch=64, repeats=3, time_fd=False)


def _best_time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile (and warm up) outside the timing
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def _fd_program(loss_flat, n_coords, method, eps, chunk):
    """The finite-difference sweep of ``jbp.gradient_check.finite_differences``, built once so it
    can be timed without its compilation (that function re-jits on every call)."""

    def run(flat, idx):
        eye = lambda k: jnp.zeros_like(flat).at[idx[k]].set(eps)  # noqa: E731
        ks = jnp.arange(n_coords)
        bs = min(chunk, n_coords)
        if method == "central":
            d = jax.lax.map(
                lambda k: loss_flat(flat + eye(k)) - loss_flat(flat - eye(k)), ks, batch_size=bs
            )
            return d / (2 * eps)
        f0 = loss_flat(flat)
        return jax.lax.map(lambda k: loss_flat(flat + eye(k)) - f0, ks, batch_size=bs) / eps

    return jax.jit(run)


def measure(sizes, cfg):
    """One row of numbers for the network ``sizes``."""
    net = jbp.MLP(sizes, "tanh", "softmax", "cross_entropy")
    kp, kx, ky = jax.random.split(jax.random.key(cfg.seed), 3)
    params = net.init(kp, jnp.float64)
    x = jax.random.normal(kx, (cfg.batch, sizes[0]), jnp.float64)
    y = jax.random.randint(ky, (cfg.batch,), 0, sizes[-1])
    flat, unravel = ravel_pytree(params)
    n = int(flat.size)
    loss_flat = lambda v: net.loss(unravel(v), x, y)  # noqa: E731
    row = {"sizes": list(sizes), "n_params": n}

    # --- how many loss evaluations finite differences perform, and is the result right?
    _, g_manual = net.loss_and_grad(params, x, y)
    g_manual = ravel_pytree(g_manual)[0]
    if n <= cfg.count_max:
        ticks, lock = [0], threading.Lock()

        def tick(v):  # called with the batch of perturbed vectors' first entries
            with lock:  # XLA may run callbacks on several threads at once
                ticks[0] += int(np.size(v))

        def counted(v):
            jax.debug.callback(tick, v[0])
            return loss_flat(v)

        for method in ("forward", "central"):
            ticks[0] = 0
            g_fd, reported = finite_differences(counted, flat, method=method, chunk=cfg.chunk)
            jax.effects_barrier()
            row[f"fd_{method}_evals_counted"] = ticks[0]
            row[f"fd_{method}_evals_reported"] = reported
            row[f"fd_{method}_rel_diff"] = rel_diff(g_fd, g_manual)

    # --- wall time (compile excluded)
    rep = cfg.repeats
    row["t_forward"] = _best_time(jax.jit(net.loss), params, x, y, repeats=rep)
    row["t_backprop"] = _best_time(jax.jit(net.loss_and_grad), params, x, y, repeats=rep)
    row["t_jax_grad"] = _best_time(jax.jit(jax.value_and_grad(net.loss)), params, x, y, repeats=rep)
    row["backprop_over_forward"] = row["t_backprop"] / row["t_forward"]
    row["jax_grad_over_forward"] = row["t_jax_grad"] / row["t_forward"]
    if not cfg.time_fd:
        return row
    n_coords = n if n <= cfg.fd_full_max else cfg.fd_sample
    idx = (
        jnp.arange(n)
        if n_coords == n
        else jax.random.choice(jax.random.key(cfg.seed + 1), n, (n_coords,), replace=False)
    )
    for method, evals, eps in (("forward", n + 1, 1.5e-8), ("central", 2 * n, 6e-6)):
        prog = _fd_program(loss_flat, n_coords, method, eps, cfg.chunk)
        t = _best_time(prog, flat, idx, repeats=1 if n_coords > 1000 else rep)
        row[f"t_fd_{method}"] = t * n / n_coords
        row[f"fd_{method}_evals"] = evals
    row["fd_extrapolated"] = n_coords != n
    row["fd_central_over_backprop"] = row["t_fd_central"] / row["t_backprop"]
    return row


def plot(rows):
    fig, axes = common.figure(1, 2, size=(5.6, 4.2))
    n = np.array([r["n_params"] for r in rows], float)
    ext = np.array([r.get("fd_extrapolated", False) for r in rows])
    ax = axes[0, 0]
    ax.loglog(n, n + 1, "o-", color="tab:blue", label="forward differences: n + 1")
    ax.loglog(n, 2 * n, "s-", color="tab:purple", label="central differences: 2n")
    ratio = np.array([r["backprop_over_forward"] for r in rows])
    ax.loglog(
        n,
        1 + ratio,
        "^-",
        color="tab:red",
        label="backprop: 1 forward + 1 backward\n(in forward-pass units, measured)",
    )
    counted = [
        (r["n_params"], r["fd_central_evals_counted"])
        for r in rows
        if "fd_central_evals_counted" in r
    ]
    if counted:
        c = np.array(counted, float)
        ax.loglog(c[:, 0], c[:, 1], "kx", ms=9, label="central, counted by callback")
    ax.set_xlabel("number of weights and biases n")
    ax.set_ylabel("cost of one gradient (loss evaluations)")
    ax.set_title("Evaluations per gradient")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    for key, style, color, label in (
        ("t_fd_central", "s-", "tab:purple", "finite differences, central"),
        ("t_fd_forward", "o-", "tab:blue", "finite differences, forward"),
        ("t_jax_grad", "d--", "tab:green", "jax.grad"),
        ("t_backprop", "^-", "tab:red", "backprop (manual BP1–BP4)"),
        ("t_forward", "v-", "tab:gray", "forward pass (loss only)"),
    ):
        if key not in rows[0]:
            continue  # --quick does not time finite differences
        t = np.array([r[key] for r in rows])
        ax.loglog(
            n, t, style, color=color, label=label, mfc="white" if key.startswith("t_fd") else None
        )
        if key.startswith("t_fd"):
            ax.loglog(n[~ext], t[~ext], style[0], color=color)  # filled: measured in full
    ax.set_xlabel("number of weights and biases n")
    ax.set_ylabel("seconds per gradient (best of repeats)")
    ax.set_title(
        "Wall time (hollow: FD timed on a sample of\ncoordinates and scaled by n)", fontsize=10
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def main(argv=None):
    args = common.parse_args(argv, __doc__)
    cfg = QUICK if args.quick else Config()
    jax.config.update("jax_enable_x64", True)  # finite differences need float64
    rows = [measure(s, cfg) for s in cfg.sizes]
    for r in rows:
        print(
            f"n={r['n_params']:>7}  backprop/forward={r['backprop_over_forward']:.2f}  "
            f"FD central/backprop={r.get('fd_central_over_backprop', float('nan')):.3g}",
            file=sys.stderr,
        )
    big = [r for r in rows if r["n_params"] >= 1000] or rows[-1:]
    counted = [r for r in rows if "fd_central_evals_counted" in r]
    claims = {
        # the evaluation counts are exact: n + 1 (forward) and 2n (central)
        "fd_forward_evals_is_n_plus_1": all(
            r["fd_forward_evals_counted"] == r["n_params"] + 1 for r in counted
        ),
        "fd_central_evals_is_2n": all(
            r["fd_central_evals_counted"] == 2 * r["n_params"] for r in counted
        ),
        # finite differences and backprop agree (central FD, float64)
        "fd_matches_backprop": all(r["fd_central_rel_diff"] < 1e-7 for r in counted),
        # timing claims: reported, never asserted in tests (the machine is shared)
        "backprop_over_forward_max_large_nets": max(r["backprop_over_forward"] for r in big),
    }
    if cfg.time_fd:
        claims["fd_over_backprop_grows_with_n"] = (
            rows[-1]["fd_central_over_backprop"] > rows[0]["fd_central_over_backprop"]
        )
    fig = plot(rows)
    return common.save(
        args.out, NAME, {"config": cfg, "quick": args.quick, "rows": rows, "claims": claims}, fig
    )


if __name__ == "__main__":
    main(sys.argv[1:])
