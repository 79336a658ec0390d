"""The epoch program: one training epoch as one pure function, compiled once by XLA.

One epoch, entirely on the device::

    key, sub = split(state.key)                  # the state's own RNG: resumable
    perm = permutation(sub, n)                   # shuffle on the device
    batches = perm → (batches, B)                # padded with masked rows to whole batches
    lax.scan over batches:                       # no Python in the inner loop
        k = fold_in(sub, step)                   # stochastic layers only: a key per step
        loss, g, mstate = model.train_grad(params, mstate, Xb, Yb, maskb, key=k)
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = params + updates
    test loss and accuracy                       # model.evaluate, in the same program

Every regime of the seed is a batch size: ``None`` (the whole set: batch gradient descent),
``1`` (stochastic gradient descent), or anything in between (mini-batch). A last batch that
does not fill up is padded and masked, so every example counts exactly once per epoch and
every batch size shares one compiled step.

The program depends on the model protocol of :mod:`jbp.model` only (``initialize``,
``train_grad``, ``evaluate``), so it trains ``jbp.MLP``, any :class:`jbp.Network`, and the
adapted plain-JAX and Flax NNX models alike. :func:`make_epoch_on_batches` runs an epoch over
batches given from outside (a known batch order to replay, or one device's share in
:mod:`jbp.parallel`); :func:`make_epoch` shuffles and batches on the device first. The host
loop around it — logging, early stopping, divergence — is :func:`jbp.fit` in :mod:`jbp.train`.
"""

import contextlib
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jbp import model as model_mod
from jbp import optim
from jbp.axes import split_axis
from jbp.per_example import per_example_grads
from jbp.util import all_finite

BACKWARDS = model_mod.BACKWARDS


class TrainState(NamedTuple):
    """Everything needed to resume a run exactly.

    Attributes:
      params: the model's parameters.
      opt_state: the optimizer's state (with its int32 step ``count``).
      step: int32, optimizer steps taken.
      epoch: int32, epochs completed.
      key: uint32 raw PRNG key data (``jax.random.key_data``) for the next epoch's shuffle
        (and the keys of stochastic layers, folded with the step).
      model_state: the model's state, e.g. running statistics (``()`` for most models).
    """

    params: object
    opt_state: object
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    model_state: object = ()


def _as_key_data(key):
    if isinstance(key, int) and not isinstance(key, bool):  # a seed, as jax.random.key takes
        return jax.random.key_data(jax.random.key(key))
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def init_state(model, optimizer, key, dtype=jnp.float32):
    """A fresh :class:`TrainState`: parameters from ``key``, shuffling from a split of it."""
    k_init, k_data = jax.random.split(jax.random.wrap_key_data(_as_key_data(key)))
    params, model_state = model.initialize(k_init, dtype)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.asarray(0, jnp.int32),
        epoch=jnp.asarray(0, jnp.int32),
        key=jax.random.key_data(k_data),
        model_state=model_state,
    )


def grad_fn(model, backward):
    """``(params, mstate, x, y, mask, key) -> (loss, grads, mstate)``, manual or ``jax.grad``."""
    offered = getattr(model, "backwards", BACKWARDS)
    if backward not in offered:
        raise ValueError(
            f"backward must be one of {', '.join(offered)} for this model, got "
            f"backward={backward!r}"
        )

    def g(params, mstate, x, y, mask, key):
        return model.train_grad(params, mstate, x, y, mask, key=key, backward=backward)

    return g


#: gradient leaves up to this size are probed every step (biases, norm scales)
PROBE_SIZE = 4096


def step_finite(loss, grads):
    """Cheap per-step divergence probe: the loss and the *small* gradient leaves are finite.

    For layers of the form Z = X·W + b the bias gradient db = Σ dZ witnesses dW = Xᵀ·dZ: a
    non-finite dW needs a non-finite dZ (then db is non-finite too) or a non-finite X (then
    the loss is). Probing the small leaves instead of every weight keeps the probe out of the
    step's cost (it was a tenth of a 784-30-10 step). Anything non-finite it misses shows up
    a step later in the loss, and at the latest in the epoch-end check of every leaf of the
    parameters and optimizer state: divergence is never silent.

    The leaves pass an optimisation barrier first: without it XLA folds Σ(db) = Σ(Σ dZ) into
    one sum over the whole dZ, a second pass over every activation (for the CNN, 0.5 ms of
    operator time per step re-reading its 28×28×32 and 14×14×64 output gradients).
    """
    small = [g for g in jax.tree.leaves(grads) if g.size <= PROBE_SIZE]
    return jnp.isfinite(loss) & all_finite(jax.lax.optimization_barrier(small))


def _lr_or_nan(opt_state):
    try:
        return jnp.asarray(optim.current_lr(opt_state), jnp.float32)
    except ValueError:
        return jnp.asarray(jnp.nan, jnp.float32)


def batch_layout(n, batch_size):
    """``(batches, B)`` for n examples: B = n for batch GD, ceil(n / B) batches."""
    b = n if batch_size is None else min(int(batch_size), n)
    return math.ceil(n / b), b


def shuffled_indices(key, n, batch_size, dtype):
    """The epoch's order: ``(idx, mask)`` of shape (batches, B), padded with masked rows."""
    nb, b = batch_layout(n, batch_size)
    perm = jax.random.permutation(key, n)
    pad = nb * b - n
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
    mask = jnp.concatenate([jnp.ones((n,), dtype), jnp.zeros((pad,), dtype)])
    return idx.reshape(nb, b), mask.reshape(nb, b)


def shuffled_batches(key, x, y, batch_size):
    """Permute on the device, pad to whole batches and reshape: ``(xb, yb, mask)``."""
    idx, mask = shuffled_indices(key, x.shape[0], batch_size, _mask_dtype(x))
    return x[idx], y[idx], mask


def _mask_dtype(x):
    return x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32


#: batches at least this large gather their rows inside the step (measured in jbp bench:
#: saves writing a shuffled copy of the data each epoch); smaller ones slice a pre-gathered copy
GATHER_PER_STEP_FROM = 32


def make_epoch(
    model,
    optimizer,
    batch_size,
    *,
    backward="manual",
    step_grad=None,
    grad_norms=False,
    on_steps=None,
):
    """Build ``epoch(state, x, y, x_test, y_test) -> (state, metrics)`` (not yet jitted).

    ``step_grad`` overrides the gradient function; ``grad_norms`` adds per-example
    gradient-norm statistics (see :func:`make_epoch_on_batches`). ``on_steps=(fn, every)``
    calls the host function ``fn(steps_done)`` every ``every`` steps from inside the
    compiled epoch (``jax.debug.callback``): a progress bar for long epochs only, since each
    call is a host round trip.
    """
    run = make_epoch_on_batches(
        model,
        optimizer,
        backward=backward,
        step_grad=step_grad,
        grad_norms=grad_norms,
        on_steps=on_steps,
    )

    def epoch(state, x, y, x_test, y_test):
        _, sub = jax.random.split(jax.random.wrap_key_data(state.key))
        idx, mb = shuffled_indices(sub, x.shape[0], batch_size, _mask_dtype(x))
        b = batch_layout(x.shape[0], batch_size)[1]
        masked = x.shape[0] % b != 0  # static: batches that all fill up need no mask at all
        if b >= GATHER_PER_STEP_FROM:
            # each step gathers its own rows: no shuffled copy of the whole set is written
            return run(state, idx, None, mb, x_test, y_test, source=(x, y), masked=masked)
        # tiny steps: one gather up front, then every mini-batch is a contiguous slice
        return run(state, x[idx], y[idx], mb, x_test, y_test, masked=masked)

    return epoch


def _grad_norms(model, params, mstate, xb, yb, key):
    """‖∇C_i‖₂ for every row i: per-example gradients by ``vmap`` (no Python loop)."""
    pe = per_example_grads(model, params, xb, yb, state=mstate, key=key)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in jax.tree.leaves(pe))
    return jnp.sqrt(sq)


def make_epoch_on_batches(
    model,
    optimizer,
    *,
    backward="manual",
    step_grad=None,
    axis_name=None,
    grad_norms=False,
    on_steps=None,
):
    """Build ``run(state, xb, yb, mb, x_test, y_test) -> (state, metrics)`` over given batches.

    This is the epoch with its batch order fixed from outside: replay a reference run with a
    known order, or run one device's share of every batch.

    Args:
      model: anything with the model protocol (:mod:`jbp.model`).
      optimizer: an ``optax.GradientTransformation``.
      backward: ``"manual"`` or ``"autodiff"``.
      step_grad: overrides :func:`grad_fn` (the parallel module passes one that sums over
        devices): ``(params, mstate, x, y, mask, key) -> (loss, grads, mstate)``.
      axis_name: the batches are one device's share, and the epoch's counts and statistics
        are summed over that mapped axis (``lax.psum``), so the metrics are the global ones.
      grad_norms: add ``grad_norm_mean``, ``grad_norm_std`` and ``grad_norm_max``: the
        per-example gradient norms ‖∇C_i‖₂ of every example of the epoch, each taken at the
        parameters its mini-batch step started from (``jbp.per_example_grads``, a ``vmap``).
      on_steps: ``(fn, every)``: call the host ``fn(steps_done)`` every ``every`` steps.

    ``xb, yb, mb`` are the epoch's mini-batches, ``(batches, B, …)``, already shuffled and
    masked; the state's key advances exactly as in :func:`make_epoch`. With
    ``source=(x, y)``, ``xb`` holds row indices and each step gathers its own rows;
    ``masked=False`` (every batch full) skips the mask arithmetic. Stochastic layers get
    ``fold_in(sub, step)`` (``sub`` the epoch's half of the state's key, ``step`` the global
    optimizer step): the same keys on resume, whatever the batch order's source.
    """
    g = step_grad or grad_fn(model, backward)
    total = (lambda v: v) if axis_name is None else (lambda v: jax.lax.psum(v, axis_name))  # noqa: E731
    stochastic = bool(getattr(model, "stochastic", False))
    whole_batch = bool(getattr(model, "whole_batch_draws", False))  # jbp layers: per layer
    train_step = _train_step(model, optimizer, g, stochastic, grad_norms, on_steps, axis_name)

    def run(state, xb, yb, mb, x_test, y_test, source=None, masked=True):
        key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
        if stochastic and axis_name is not None and not whole_batch:  # each device its own
            sub = jax.random.fold_in(sub, jax.lax.axis_index(axis_name))
        carry = (state.params, state.opt_state, state.model_state, jnp.asarray(-1, jnp.int32),
                 state.step)  # fmt: skip
        xs = (xb, yb, mb, jnp.arange(xb.shape[0], dtype=jnp.int32))
        step_fn = functools.partial(train_step, source, masked, sub)
        (params, opt_state, mstate, bad_step, step), out = jax.lax.scan(step_fn, carry, xs)
        test_loss, test_accuracy = model.evaluate(params, mstate, x_test, y_test)
        metrics = {
            "train_loss": total(jnp.sum(out[0])) / total(jnp.sum(out[1])),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "lr": _lr_or_nan(opt_state),
            # a last update that overflowed shows only in the parameters: one check per epoch
            "bad_step": jnp.where(
                (bad_step < 0) & ~all_finite((params, opt_state, mstate)), step - 1, bad_step
            ),
        }
        if grad_norms:
            metrics.update(_grad_norm_metrics(out, total, axis_name))
        new_state = TrainState(
            params, opt_state, step, state.epoch + 1, jax.random.key_data(key), mstate
        )
        return new_state, metrics

    return run


def _train_step(model, optimizer, g, stochastic, grad_norms, on_steps, axis_name=None):
    """One optimizer step, the body of the epoch's ``lax.scan``.

    The carry is ``(params, opt_state, model_state, bad_step, step)``; each step emits the
    loss weighted by this device's real rows and that count (summed over devices by
    ``total`` once per epoch), and with
    ``grad_norms`` the per-example norms' sum, sum of squares and maximum.
    """

    def train_step(source, masked, sub, carry, batch):
        params, opt_state, mstate, bad_step, step = carry
        xb, yb, mb, i = batch
        if source is not None:  # xb holds the batch's row indices
            xb, yb = source[0][xb], source[1][xb]
        key = jax.random.fold_in(sub, step) if stochastic else None
        loss, grads, new_mstate = g(params, mstate, xb, yb, mb if masked else None, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # divergence: remember the first bad step; the host then discards the whole epoch
        ok = step_finite(loss, grads)
        bad_step = jnp.where((bad_step < 0) & ~ok, step, bad_step)
        # this device's real rows: the epoch's sums go over the mesh once, at the end — the
        # step's one collective is the gradient's (see jbp.parallel.sharded_grad)
        n = jnp.sum(mb)
        out = (loss * n, n)
        if grad_norms:  # with the batch split, each example's draws are its row of the batch's
            with split_axis(axis_name) if axis_name is not None else contextlib.nullcontext():
                norm = _grad_norms(model, params, mstate, xb, yb, key)
            m = mb.astype(norm.dtype)
            out += (jnp.sum(norm * m), jnp.sum(norm**2 * m), jnp.max(jnp.where(m > 0, norm, 0)))
        if on_steps is not None:
            fn, every = on_steps
            jax.lax.cond(
                (i + 1) % every == 0, lambda j: jax.debug.callback(fn, j), lambda j: None, i + 1
            )
        return (new_params, opt_state, new_mstate, bad_step, step + 1), out

    return train_step


def _grad_norm_metrics(out, total, axis_name):
    """Mean, standard deviation and maximum of the epoch's per-example gradient norms."""
    count, s1, s2 = total(jnp.sum(out[1])), total(jnp.sum(out[2])), total(jnp.sum(out[3]))
    mx = jnp.max(out[4]) if axis_name is None else jax.lax.pmax(jnp.max(out[4]), axis_name)
    mean = s1 / count
    return {
        "grad_norm_mean": mean,
        "grad_norm_std": jnp.sqrt(jnp.maximum(s2 / count - mean**2, 0)),
        "grad_norm_max": mx,
    }
