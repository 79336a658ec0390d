"""Optimizers written from the textbook recurrences, in optax's shape.

Every optimizer here is an ``optax.GradientTransformation``, a pair of pure functions:

    init(params) -> state
    update(grads, state, params=None) -> (updates, new_state)

``updates`` has the structure of ``params`` and is *added* to them (it already
carries the minus sign, ``-lr · direction``), so ``optax.apply_updates(params,
updates)`` takes one step, and the optimizers compose with ``optax.chain``.

``state`` is a NamedTuple pytree with

* ``count``: int32 scalar, the number of steps taken so far. It is an array, not a
  Python int, so a jitted step never recompiles as it grows.
* ``lr``: the learning rate used by the last step (``lr`` itself, or
  ``schedule(0)`` before the first step), a scalar of the default float dtype
  (float32, float64 under ``jax_enable_x64``). :func:`current_lr` finds it.
* the moment estimates (``v``, ``s``, ``m``), shaped and typed like ``params``.

``lr`` is a positive float or a schedule: a callable of the int32 step count,
evaluated at the count *before* the step (optax's convention: the first update uses
``schedule(0)``); see :mod:`jbp.schedules`. Hyperparameters are checked when the
optimizer is built (outside jit); a bad one raises ``ValueError`` naming the value
given, e.g. ``b1 must be in [0, 1), got b1=1.0``.

Notation (the seed's): w the weights, g = ∂C/∂w the gradient, t = 1, 2, … the step,
α = lr the learning rate, β the decay of an exponentially weighted moving average.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbp import options as _options
from jbp.util import flag, is_real, real

ScalarOrSchedule = float | Callable[[jax.Array], jax.typing.ArrayLike]


class SgdState(NamedTuple):
    count: jax.Array  # int32 scalar: steps taken
    lr: jax.Array  # learning rate of the last step


class MomentumState(NamedTuple):
    count: jax.Array
    lr: jax.Array
    v: Any  # first moment estimate (EWMA of gradients), like params


class RMSpropState(NamedTuple):
    count: jax.Array
    lr: jax.Array
    s: Any  # second moment estimate (EWMA of squared gradients), like params


class AdamState(NamedTuple):
    count: jax.Array
    lr: jax.Array
    m: Any  # first moment estimate
    v: Any  # second moment estimate


# --- hyperparameter checks (run once, when the optimizer is built) ---


def _check_lr(lr) -> None:
    if callable(lr):
        return
    if not is_real(lr):
        raise ValueError(f"lr must be a number > 0 or a schedule, got lr={lr!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got lr={lr!r}")
    if not math.isfinite(lr):
        raise ValueError(f"lr must be finite, got lr={lr!r}")


def _check_decay(name: str, beta) -> None:
    real(name, beta, low=0, high=1, high_open=True)


def _check_eps(eps) -> None:
    real("eps", eps, low=0, message=f"eps must be >= 0 and finite, got eps={eps!r}")


# --- shared pieces ---


def _lr_at(lr: ScalarOrSchedule, count: jax.Array) -> jax.Array:
    """The learning rate for the step that starts at ``count`` steps taken."""
    return jnp.asarray(lr(count) if callable(lr) else lr, dtype=jnp.result_type(float))


def _zeros(params):
    return jax.tree.map(jnp.zeros_like, params)


def _ewma(avg, x, beta):
    """One step of an exponentially weighted moving average: β·avg + (1 − β)·x."""
    return jax.tree.map(lambda a, b: beta * a + (1 - beta) * b, avg, x)


def _init_state(lr):
    return jnp.zeros([], jnp.int32), _lr_at(lr, jnp.zeros([], jnp.int32))


# --- the optimizers ---


def sgd(lr: ScalarOrSchedule) -> optax.GradientTransformation:
    """Gradient descent: ``w ← w − α·g``.

    Args:
        lr: learning rate α > 0, or a schedule ``step -> α``.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`SgdState`.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> opt = sgd(0.1)
        >>> w = jnp.array(1.0); state = opt.init(w)
        >>> updates, state = opt.update(jnp.array(0.5), state)
        >>> round(float(optax.apply_updates(w, updates)), 6)  # 1 − 0.1·0.5
        0.95

    Reference: Cauchy (1847); Nielsen, *Neural Networks and Deep Learning*, ch. 1.
    """
    _check_lr(lr)

    def init(params):
        del params
        return SgdState(*_init_state(lr))

    def update(grads, state, params=None):
        del params
        alpha = _lr_at(lr, state.count)
        updates = jax.tree.map(lambda g: -alpha.astype(g.dtype) * g, grads)
        return updates, SgdState(state.count + 1, alpha)

    return optax.GradientTransformation(init, update)


def momentum(
    lr: ScalarOrSchedule, beta: float = 0.9, bias_correction: bool = False
) -> optax.GradientTransformation:
    """Gradient descent with momentum, in the EWMA form.

    ``v ← β·v + (1 − β)·g``,  ``w ← w − α·v``  (``v₀ = 0``), or, with
    ``bias_correction=True``, ``w ← w − α·v / (1 − βᵗ)``.

    This is the form of Ng's deep-learning course. Heavy-ball momentum
    (Polyak 1964; ``optax.sgd(α', momentum=β)``), ``u ← β·u + g``, ``w ← w − α'·u``,
    follows exactly the same path when ``α' = α·(1 − β)``, since ``v = (1 − β)·u``.

    Args:
        lr: learning rate α > 0, or a schedule.
        beta: decay β of the velocity, in [0, 1); default 0.9 (averages over about
            1/(1 − β) = 10 steps).
        bias_correction: divide by 1 − βᵗ so early steps are not biased towards 0.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`MomentumState`.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = momentum(0.1, beta=0.9)
        >>> state = opt.init(jnp.array(1.0))
        >>> updates, state = opt.update(jnp.array(0.5), state)
        >>> round(float(updates), 6)  # v = 0.1·0.5 = 0.05, update = −0.1·0.05
        -0.005

    Reference: B. T. Polyak, "Some methods of speeding up the convergence of
    iteration methods" (1964); A. Ng, *Improving Deep Neural Networks*, week 2.
    """
    _check_lr(lr)
    _check_decay("beta", beta)
    flag("bias_correction", bias_correction)

    def init(params):
        return MomentumState(*_init_state(lr), v=_zeros(params))

    def update(grads, state, params=None):
        del params
        alpha, t = _lr_at(lr, state.count), state.count + 1
        v = _ewma(state.v, grads, beta)  # velocity: first moment estimate
        step = alpha / (1 - beta**t) if bias_correction else alpha  # bias correction
        updates = jax.tree.map(lambda vi: -step.astype(vi.dtype) * vi, v)
        return updates, MomentumState(t, alpha, v)

    return optax.GradientTransformation(init, update)


def rmsprop(lr: ScalarOrSchedule, beta: float = 0.9, eps: float = 1e-8):
    """RMSprop: divide the gradient by a running root mean square of its recent values.

    ``S ← β·S + (1 − β)·g²``,  ``w ← w − α·g / (√S + ε)``  (``S₀ = 0``, elementwise).

    The seed writes ``w ← w − α·g/√S``; that divides by zero where a gradient has been
    0 since the start, so ``ε`` is added *outside* the root (as in Ng's course and
    ``optax.rmsprop(..., eps_in_sqrt=False)``; optax's default puts it inside).

    Args:
        lr: learning rate α > 0, or a schedule.
        beta: decay β of the mean square, in [0, 1); default 0.9.
        eps: ε ≥ 0 added to the root mean square; default 1e-8.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`RMSpropState`.

    Example:
        >>> import jax.numpy as jnp
        >>> opt = rmsprop(0.01, beta=0.9, eps=0.0)
        >>> state = opt.init(jnp.array(1.0))
        >>> updates, state = opt.update(jnp.array(0.5), state)
        >>> round(float(updates), 6)  # S = 0.1·0.25, update = −0.01·0.5/√S = −0.01·√10
        -0.031623

    Reference: G. Hinton, *Neural Networks for Machine Learning* (Coursera, 2012),
    lecture 6e.
    """
    _check_lr(lr)
    _check_decay("beta", beta)
    _check_eps(eps)

    def init(params):
        return RMSpropState(*_init_state(lr), s=_zeros(params))

    def update(grads, state, params=None):
        del params
        alpha = _lr_at(lr, state.count)
        s = _ewma(state.s, jax.tree.map(jnp.square, grads), beta)  # second moment estimate
        updates = jax.tree.map(
            lambda g, si: -alpha.astype(g.dtype) * g / (jnp.sqrt(si) + eps), grads, s
        )
        return updates, RMSpropState(state.count + 1, alpha, s)

    return optax.GradientTransformation(init, update)


def adam(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam: momentum and RMSprop together, with bias correction.

    ``m ← β₁·m + (1 − β₁)·g``,  ``v ← β₂·v + (1 − β₂)·g²``,
    ``m̂ = m / (1 − β₁ᵗ)``,  ``v̂ = v / (1 − β₂ᵗ)``,  ``w ← w − α·m̂ / (√v̂ + ε)``.

    Args:
        lr: learning rate α > 0, or a schedule; the paper suggests 1e-3.
        b1: decay β₁ of the first moment estimate, in [0, 1); default 0.9.
        b2: decay β₂ of the second moment estimate, in [0, 1); default 0.999.
        eps: ε ≥ 0 added to √v̂; default 1e-8.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`AdamState`
        (equal to ``optax.adam`` step for step).

    Example:
        >>> import jax.numpy as jnp
        >>> opt = adam(0.1)
        >>> state = opt.init(jnp.array(1.0))
        >>> updates, state = opt.update(jnp.array(0.5), state)
        >>> round(float(updates), 4)  # m̂ = g, v̂ = g², so the first step is ≈ −α·sign(g)
        -0.1

    Reference: D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization"
    (2014), Algorithm 1.
    """
    _check_lr(lr)
    _check_decay("b1", b1)
    _check_decay("b2", b2)
    _check_eps(eps)

    def init(params):
        return AdamState(*_init_state(lr), m=_zeros(params), v=_zeros(params))

    def update(grads, state, params=None):
        del params
        alpha, t = _lr_at(lr, state.count), state.count + 1
        m = _ewma(state.m, grads, b1)  # first moment estimate
        v = _ewma(state.v, jax.tree.map(jnp.square, grads), b2)  # second moment estimate

        def step(mi, vi):
            m_hat = mi / (1 - b1**t).astype(mi.dtype)  # bias correction
            v_hat = vi / (1 - b2**t).astype(vi.dtype)
            return -alpha.astype(mi.dtype) * (m_hat / (jnp.sqrt(v_hat) + eps))

        return jax.tree.map(step, m, v), AdamState(t, alpha, m, v)

    return optax.GradientTransformation(init, update)


# --- helpers ---


def current_lr(opt_state) -> jax.Array:
    """The learning rate of the last step, from a jbp optimizer's state.

    Looks for a field named ``lr`` anywhere in ``opt_state``, which may be nested in
    tuples, lists or dicts (e.g. the state of an ``optax.chain``), and returns the
    first one found (depth first).

    Raises:
        ValueError: no ``lr`` field in the state.
    """
    found = _find_lr(opt_state)
    if found is None:
        raise ValueError(
            "no 'lr' field in this optimizer state (type "
            f"{type(opt_state).__name__}); current_lr reads the state of a jbp.optim "
            "optimizer, alone or inside optax.chain"
        )
    return found


def _find_lr(node):
    if hasattr(node, "_fields") and "lr" in node._fields:
        return node.lr
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, (tuple, list)):
        for child in node:
            found = _find_lr(child)
            if found is not None:
                return found
    return None


#: name -> optimizer; each one's keyword parameters after ``lr`` are its hyperparameters.
BUILDERS = {"sgd": sgd, "momentum": momentum, "rmsprop": rmsprop, "adam": adam}
NAMES = tuple(BUILDERS)


def hyperparameters(name: str) -> tuple:
    """The hyperparameter names optimizer ``name`` accepts (its function's parameters)."""
    _, fn = _options.lookup("optimizer", name, BUILDERS)
    return _options.accepted(fn, ("lr",))


def get(name: str, lr: ScalarOrSchedule, **hparams) -> optax.GradientTransformation:
    """Build an optimizer from its name (``sgd``, ``momentum``, ``rmsprop``, ``adam``).

    ``hparams`` are the keyword parameters of the function of that name.

    Example:
        >>> opt = get("adam", 1e-3, b2=0.99)
    """
    key, fn = _options.lookup("optimizer", name, BUILDERS)
    _options.check_keys("optimizer", key, hparams, hyperparameters(key))
    return fn(lr, **hparams)
