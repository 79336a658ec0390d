"""The training engine: ``jbp.fit`` runs each epoch as one compiled XLA program.

One epoch, entirely on the device::

    key, sub = split(state.key)                  # the state's own RNG: resumable
    perm = permutation(sub, n)                   # shuffle on the device
    X, Y, mask = gather(perm) → (batches, B, …)  # one gather; each mini-batch is then a slice
    lax.scan over batches:                       # no Python in the inner loop
        loss, g = backward(params, Xb, Yb, maskb)     # manual BP1–BP4, or jax.grad
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = params + updates
    test loss and accuracy                       # evaluated in the same program

Every regime of the seed is a batch size: ``None`` (the whole set: batch gradient descent),
``1`` (stochastic gradient descent), or anything in between (mini-batch). A last batch that
does not fill up is padded and masked, so every example counts exactly once per epoch and
every batch size shares one compiled step. The host is visited once per epoch, to log.

Divergence is never silent: a non-finite loss or gradient freezes the parameters at their
last finite value inside the scan and :class:`DivergenceError` names the epoch and step.
"""

import functools
import hashlib
import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp import mlp, optim


class TrainState(NamedTuple):
    """Everything needed to resume a run exactly.

    Attributes:
      params: the network's parameters.
      opt_state: the optimizer's state (with its int32 step ``count``).
      step: int32, optimizer steps taken.
      epoch: int32, epochs completed.
      key: uint32 raw PRNG key data (``jax.random.key_data``) for the next epoch's shuffle.
    """

    params: object
    opt_state: object
    step: jax.Array
    epoch: jax.Array
    key: jax.Array


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or gradient."""

    def __init__(self, epoch, step, state):
        self.epoch, self.step, self.state = epoch, step, state  # state: the last good epoch's
        in_epoch = step - int(state.step)
        super().__init__(
            f"training diverged: non-finite loss or gradient at epoch {epoch}, step {in_epoch} "
            f"of the epoch (optimizer step {step} overall); the parameters of epoch "
            f"{epoch - 1} are kept and nothing non-finite is saved — try a smaller learning rate"
        )


BACKWARDS = ("manual", "autodiff")


def params_sha256(params):
    """SHA-256 of the parameters' bytes, leaves in tree order: equal hashes ⇔ equal bits."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def _as_key_data(key):
    if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return jnp.asarray(key, jnp.uint32)


def init_state(net, optimizer, key, dtype=jnp.float32):
    """A fresh :class:`TrainState`: parameters from ``key``, shuffling from a split of it."""
    k_init, k_data = jax.random.split(jax.random.wrap_key_data(_as_key_data(key)))
    params = net.init(k_init, dtype)
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.asarray(0, jnp.int32),
        epoch=jnp.asarray(0, jnp.int32),
        key=jax.random.key_data(k_data),
    )


def grad_fn(net, backward):
    """``(params, x, y, mask) -> (loss, grads)`` by the manual backward or by ``jax.grad``."""
    if backward == "manual":
        return net.loss_and_grad
    if backward == "autodiff":
        return jax.value_and_grad(net.loss)
    raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got backward={backward!r}")


def _all_finite(tree):
    # One float sum per leaf instead of isfinite + logical-and reductions: a NaN or ±inf
    # anywhere makes its sum non-finite, and float sums vectorise where boolean
    # reductions do not.
    total = sum(jnp.sum(x) for x in jax.tree.leaves(tree))
    return jnp.isfinite(total)


def _step_finite(loss, grads):
    """Cheap per-step divergence probe: the loss and the *bias* gradients are finite.

    The bias gradients witness the weight gradients: db = 1/m·Σ dZ and dW = 1/m·Aᵀ·dZ, so a
    non-finite dW needs a non-finite dZ (then db is non-finite too) or a non-finite A (then
    the loss is). Checking the few bias entries instead of every weight keeps the probe
    out of the step's cost (it was a tenth of a 784-30-10 step). A float overflow inside
    Aᵀ·dZ alone would surface one step later, in the loss, or in the epoch-end check.
    """
    small = [g for g in jax.tree.leaves(grads) if g.ndim <= 1] or jax.tree.leaves(grads)
    return jnp.isfinite(loss) & _all_finite(small)


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
    idx, mask = shuffled_indices(key, x.shape[0], batch_size, x.dtype)
    return x[idx], y[idx], mask


#: batches at least this large gather their rows inside the step (measured in jbp bench:
#: saves writing a shuffled copy of the data each epoch); smaller ones slice a pre-gathered copy
GATHER_PER_STEP_FROM = 32


def make_epoch(
    net,
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
        net,
        optimizer,
        backward=backward,
        step_grad=step_grad,
        grad_norms=grad_norms,
        on_steps=on_steps,
    )

    def epoch(state, x, y, x_test, y_test):
        _, sub = jax.random.split(jax.random.wrap_key_data(state.key))
        idx, mb = shuffled_indices(sub, x.shape[0], batch_size, x.dtype)
        b = batch_layout(x.shape[0], batch_size)[1]
        masked = x.shape[0] % b != 0  # static: batches that all fill up need no mask at all
        if b >= GATHER_PER_STEP_FROM:
            # each step gathers its own rows: no shuffled copy of the whole set is written
            return run(state, idx, None, mb, x_test, y_test, source=(x, y), masked=masked)
        # tiny steps: one gather up front, then every mini-batch is a contiguous slice
        return run(state, x[idx], y[idx], mb, x_test, y_test, masked=masked)

    return epoch


def _grad_norms(net, params, xb, yb):
    """‖∇C_i‖₂ for every row i: per-example gradients by ``vmap`` (no Python loop)."""
    pe = mlp.per_example_grads(net, params, xb, yb)
    sq = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in jax.tree.leaves(pe))
    return jnp.sqrt(sq)


def make_epoch_on_batches(
    net,
    optimizer,
    *,
    backward="manual",
    step_grad=None,
    axis_name=None,
    grad_norms=False,
    on_steps=None,
):
    """Build ``run(state, xb, yb, mb, x_test, y_test) -> (state, metrics)`` over given batches.

    ``xb, yb, mb`` are the epoch's mini-batches, ``(batches, B, …)``, already shuffled and
    masked; the state's key advances exactly as in :func:`make_epoch`. ``step_grad`` overrides
    the gradient function (the parallel module passes one that sums over devices). With
    ``axis_name``, the batches are one device's share and the epoch's counts and statistics
    are summed over that mapped axis (``lax.psum``), so the metrics are the global ones.
    With ``source=(x, y)``, ``xb`` holds row indices and each step gathers its own rows;
    ``masked=False`` (every batch full) skips the mask arithmetic.

    ``grad_norms=True`` adds ``grad_norm_mean``, ``grad_norm_std`` and ``grad_norm_max``:
    the per-example gradient norms ‖∇C_i‖₂ of every example of the epoch, each taken at the
    parameters its mini-batch step started from (``jbp.per_example_grads``, a ``vmap``).
    """
    g = step_grad or grad_fn(net, backward)
    total = (lambda v: v) if axis_name is None else (lambda v: jax.lax.psum(v, axis_name))  # noqa: E731

    def train_step(source, masked, carry, batch):
        params, opt_state, bad_step, step = carry
        xb, yb, mb, i = batch
        if source is not None:  # xb holds the batch's row indices
            xb, yb = source[0][xb], source[1][xb]
        loss, grads = g(params, xb, yb, mb) if masked else g(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        # divergence: remember the first bad step; the host then discards the whole epoch
        ok = _step_finite(loss, grads)
        bad_step = jnp.where((bad_step < 0) & ~ok, step, bad_step)
        n = total(jnp.sum(mb))
        out = (loss * n, n)
        if grad_norms:
            norm = _grad_norms(net, carry[0], xb, yb)
            m = mb.astype(norm.dtype)
            out += (jnp.sum(norm * m), jnp.sum(norm**2 * m), jnp.max(jnp.where(m > 0, norm, 0)))
        if on_steps is not None:
            fn, every = on_steps
            jax.lax.cond(
                (i + 1) % every == 0, lambda j: jax.debug.callback(fn, j), lambda j: None, i + 1
            )
        return (params, opt_state, bad_step, step + 1), out

    def run(state, xb, yb, mb, x_test, y_test, source=None, masked=True):
        key, _ = jax.random.split(jax.random.wrap_key_data(state.key))
        carry = (state.params, state.opt_state, jnp.asarray(-1, jnp.int32), state.step)
        xs = (xb, yb, mb, jnp.arange(xb.shape[0], dtype=jnp.int32))
        step_fn = functools.partial(train_step, source, masked)
        (params, opt_state, bad_step, step), out = jax.lax.scan(step_fn, carry, xs)
        wloss, n = out[:2]
        metrics = {
            "train_loss": jnp.sum(wloss) / jnp.sum(n),
            "test_loss": net.loss(params, x_test, y_test),
            "test_accuracy": net.accuracy(params, x_test, y_test),
            "lr": _lr_or_nan(opt_state),
            # a last update that overflowed shows only in the parameters: one check per epoch
            "bad_step": jnp.where(
                (bad_step < 0) & ~_all_finite((params, opt_state)), step - 1, bad_step
            ),
        }
        if grad_norms:
            count, s1, s2 = jnp.sum(n), total(jnp.sum(out[2])), total(jnp.sum(out[3]))
            mx = jnp.max(out[4]) if axis_name is None else jax.lax.pmax(jnp.max(out[4]), axis_name)
            mean = s1 / count
            metrics["grad_norm_mean"] = mean
            metrics["grad_norm_std"] = jnp.sqrt(jnp.maximum(s2 / count - mean**2, 0))
            metrics["grad_norm_max"] = mx
        new_state = TrainState(params, opt_state, step, state.epoch + 1, jax.random.key_data(key))
        return new_state, metrics

    return run


def check_fit_args(net, data, batch_size, epochs, backward):
    """Validate ``fit``'s arguments outside ``jit``; raise ``ValueError`` naming the problem."""
    if backward not in BACKWARDS:
        raise ValueError(
            f"backward must be one of {', '.join(BACKWARDS)}, got backward={backward!r}"
        )
    if batch_size is not None and (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(
            f"batch_size must be a positive integer or None (the whole set), got {batch_size!r}"
        )
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got epochs={epochs!r}")
    for split, x, y in (("train", data[0], data[1]), ("test", data[2], data[3])):
        if np.ndim(x) != 2 or np.shape(x)[1] != net.sizes[0]:
            raise ValueError(
                f"the {split} inputs have shape {np.shape(x)} but the network's input width is "
                f"{net.sizes[0]} (sizes={net.sizes})"
            )
        if np.shape(x)[0] == 0:
            raise ValueError(f"the {split} split is empty")
        net.targets(np.asarray(y), np.shape(x)[0], jnp.float32)  # shape and label range


def fit(
    net,
    optimizer,
    data,
    *,
    batch_size=64,
    epochs=10,
    key=None,
    backward="manual",
    state=None,
    dtype=jnp.float32,
    patience=None,
    callback=None,
    progress=False,
    epoch_fn=None,
    devices=None,
    parallel="shard_map",
    grad_norms=False,
):
    """Train ``net`` on ``data``; return ``(state, history)``.

    Args:
      net: a ``jbp.MLP``.
      optimizer: an ``optax.GradientTransformation`` (e.g. ``jbp.optim.adam(1e-3)``).
      data: a ``jbp.data.Dataset(x_train, y_train, x_test, y_test)``.
      batch_size: ``None`` = batch gradient descent, ``1`` = stochastic, else mini-batch.
      epochs: the epoch to train *up to*: resuming a state at epoch 3 with ``epochs=6`` runs
        three more, and gives the same parameters as one run of six.
      key: a PRNG key (``jax.random.key(0)``) for the initial parameters and the shuffles.
      backward: ``"manual"`` (BP1–BP4 by hand) or ``"autodiff"`` (``jax.grad``).
      state: a :class:`TrainState` to continue from instead of a fresh one.
      dtype: parameter and data dtype for a fresh state.
      patience: stop when the test loss has not improved for this many epochs; the best
        parameters are returned.
      callback: ``callback(state, record) -> bool``, called after every epoch on the host;
        returning True stops training after that epoch.
      progress: show a progress bar over epochs (on a terminal).
      epoch_fn: a pre-built epoch program (the parallel module passes a sharded one).
      devices: data parallelism: split every mini-batch over this many devices (a mesh
        with one ``"batch"`` axis; see ``jbp.parallel``). ``None``: one device, or every
        device of a multi-process run.
      parallel: ``"shard_map"`` (default) or ``"pmap"``, the mechanism for ``devices``.
      grad_norms: add ``grad_norm_mean``, ``grad_norm_std``, ``grad_norm_max`` (per-example
        gradient norms over the epoch, by ``vmap``) to every record.

    Returns:
      ``(state, history)``: the final :class:`TrainState` and one dict per epoch with
      ``epoch``, ``step``, ``train_loss`` (mean of the epoch's mini-batch losses),
      ``test_loss``, ``test_accuracy``, ``lr`` (of the epoch's last step) and ``seconds``.

    Raises:
      ValueError: bad arguments or data that does not fit the network.
      DivergenceError: a non-finite loss or gradient (``err.state`` holds the last good one).
    """
    check_fit_args(net, data, batch_size, epochs, backward)
    if patience is not None and (not isinstance(patience, (int, np.integer)) or patience < 1):
        raise ValueError(f"patience must be a positive integer, got patience={patience!r}")
    if state is None:
        if key is None:
            raise ValueError("fit needs key= (e.g. jax.random.key(0)) or a state= to resume")
        state = init_state(net, optimizer, key, dtype)
    else:
        net.check_params(state.params)
    dt = jax.tree.leaves(state.params)[0].dtype
    x, y, x_test, y_test = _device_data(data, dt)
    step_bar = None
    if epoch_fn is None:
        from jbp import parallel as par  # imported here: jbp.parallel builds on this module

        par.check_args(devices, parallel)
        if devices is not None or jax.process_count() > 1:
            epoch_fn = par.make_epoch_fn(
                net, optimizer, batch_size, devices, parallel, backward, grad_norms
            )
        else:
            step_bar, on_steps = _step_progress(progress, x.shape[0], batch_size)
            epoch_fn = jax.jit(
                make_epoch(
                    net,
                    optimizer,
                    batch_size,
                    backward=backward,
                    grad_norms=grad_norms,
                    on_steps=on_steps,
                )
            )
    history = []
    best = (math.inf, state.params, 0)
    start = int(state.epoch)
    bar = _progress_bar(start, epochs) if progress else None
    try:
        for _ in range(start, epochs):
            t0 = time.perf_counter()
            if step_bar is not None:
                step_bar.reset()
            new_state, metrics = epoch_fn(state, x, y, x_test, y_test)
            metrics = jax.device_get(metrics)  # the one host round trip of the epoch
            seconds = time.perf_counter() - t0
            if int(metrics["bad_step"]) >= 0:  # keep the last completed epoch's (finite) state
                raise DivergenceError(int(new_state.epoch), int(metrics["bad_step"]) + 1, state)
            state = new_state
            record = {
                "epoch": int(state.epoch),
                "step": int(state.step),
                "train_loss": float(metrics["train_loss"]),
                "test_loss": float(metrics["test_loss"]),
                "test_accuracy": float(metrics["test_accuracy"]),
                "lr": None if np.isnan(metrics["lr"]) else float(metrics["lr"]),
                "seconds": seconds,
            }
            for k in ("grad_norm_mean", "grad_norm_std", "grad_norm_max"):
                if k in metrics:
                    record[k] = float(metrics[k])
            history.append(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{record['train_loss']:.4f}", acc=f"{record['test_accuracy']:.4f}"
                )
            stop = bool(callback(state, record)) if callback is not None else False
            if patience is not None:
                if record["test_loss"] < best[0]:
                    best = (record["test_loss"], state.params, record["epoch"])
                elif record["epoch"] - best[2] >= patience:
                    state = state._replace(params=best[1])
                    record["early_stopped"] = True
                    record["best_epoch"] = best[2]
                    break
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        if step_bar is not None:
            step_bar.close()
    return state, history


def _device_data(data, dtype):
    x, y, x_test, y_test = data

    def y_dt(v):  # integer labels stay integers; real targets take the parameters' dtype
        v = np.asarray(v)
        return v if np.issubdtype(v.dtype, np.integer) else v.astype(dtype)

    return (
        jnp.asarray(np.asarray(x), dtype),
        jnp.asarray(y_dt(y)),
        jnp.asarray(np.asarray(x_test), dtype),
        jnp.asarray(y_dt(y_test)),
    )


#: an epoch with at least this many steps also gets a progress bar over its steps
LONG_EPOCH_STEPS = 1000


def _step_progress(progress, n, batch_size):
    """``(bar, on_steps)`` for a bar over the steps of a long epoch on a terminal, else Nones."""
    import sys

    nb, _ = batch_layout(n, batch_size)
    if not progress or nb < LONG_EPOCH_STEPS or not sys.stderr.isatty():
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=nb, unit="step", position=1, leave=False, dynamic_ncols=True)

    def update(done):
        bar.n = int(done)
        bar.refresh()

    return bar, (update, max(1, nb // 50))


def _progress_bar(start, total):
    import sys

    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        unit="epoch",
        disable=not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )
