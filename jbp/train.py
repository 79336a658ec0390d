"""The host loop: ``jbp.fit`` trains any model, one compiled epoch program per epoch.

The epoch itself — shuffle, mini-batches, the scan of optimizer steps, the test metrics — is
one XLA program built by :mod:`jbp.epoch` (or, over several devices, by :mod:`jbp.parallel`).
This module is what happens around it, on the host, once per epoch: the metrics come back in
one transfer, are logged, checked and handed to callbacks; early stopping keeps the best
parameters; progress bars show on a terminal.

Divergence is never silent: a non-finite loss or gradient anywhere in an epoch discards that
epoch whole, and :class:`DivergenceError` names the epoch and step and carries the last good
state.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from jbp import parallel as par
from jbp.epoch import (  # noqa: F401 - re-exported: the engine's pieces, under their old home
    BACKWARDS,
    GATHER_PER_STEP_FROM,
    TrainState,
    batch_layout,
    grad_fn,
    init_state,
    make_epoch,
    make_epoch_on_batches,
    shuffled_batches,
    shuffled_indices,
)
from jbp.util import integer, tree_sha256


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


def params_sha256(params):
    """SHA-256 of the parameters' bytes, leaves in tree order: equal hashes ⇔ equal bits."""
    return tree_sha256(params)


def check_model(model):
    """Raise ``ValueError`` unless ``model`` has the model protocol (see :mod:`jbp.model`)."""
    missing = [
        m
        for m in ("initialize", "train_grad", "evaluate", "check_data")
        if not callable(getattr(model, m, None))
    ]
    if missing:
        raise ValueError(
            f"fit needs a model (jbp.MLP, jbp.Network, jbp.adapters.*), got {type(model).__name__} "
            f"without {', '.join(missing)}; wrap a plain function with jbp.adapters.from_function "
            f"or a Flax NNX module with jbp.adapters.from_nnx"
        )


def check_fit_args(model, data, batch_size, epochs, backward):
    """Validate ``fit``'s arguments outside ``jit``; raise ``ValueError`` naming the problem."""
    check_model(model)
    offered = getattr(model, "backwards", BACKWARDS)
    if backward not in offered:
        raise ValueError(
            f"backward must be one of {', '.join(offered)} for this model, got "
            f"backward={backward!r}"
        )
    if batch_size is not None:
        integer("batch_size", batch_size, message="batch_size must be a positive integer or "
                f"None (the whole set), got {batch_size!r}")  # fmt: skip
    integer("epochs", epochs)
    for split, x, y in (("train", data[0], data[1]), ("test", data[2], data[3])):
        model.check_data(x, y, split)  # input shape, non-empty, target shape, label range


def fit(
    model,
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
    """Train ``model`` on ``data``; return ``(state, history)``.

    Args:
      model: a ``jbp.MLP``, a :class:`jbp.Network` of layers, or an adapted plain JAX
        function or Flax NNX module (:mod:`jbp.adapters`): anything with the model protocol
        of :mod:`jbp.model`.
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
    check_fit_args(model, data, batch_size, epochs, backward)
    if patience is not None:
        integer("patience", patience)
    if grad_norms and getattr(model, "batch_coupled", False):
        raise ValueError("grad_norms needs per-example gradients: this model couples examples")
    state = _start_state(model, optimizer, key, state, dtype)
    x, y, x_test, y_test = device_data(data, _param_dtype(state.params, dtype))
    step_bar = None
    if epoch_fn is None:
        par.check_args(devices, parallel)
        if devices is not None or jax.process_count() > 1:
            epoch_fn = par.make_epoch_fn(
                model, optimizer, batch_size, devices, parallel, backward, grad_norms
            )
        else:
            step_bar, on_steps = _step_progress(progress, x.shape[0], batch_size)
            # Deliberately not donate_argnums: the host keeps the previous epoch's state (the
            # last good one a DivergenceError hands back; early stopping's best; a callback's
            # saved copy), and a donated input would be freed under them. The copy it costs
            # is one set of parameters and optimizer moments per epoch, not per step.
            epoch_fn = jax.jit(
                make_epoch(model, optimizer, batch_size, backward=backward,
                           grad_norms=grad_norms, on_steps=on_steps)
            )  # fmt: skip
    bars = (_progress_bar(int(state.epoch), epochs) if progress else None, step_bar)
    try:
        return _epochs(epoch_fn, state, (x, y, x_test, y_test), epochs, callback,
                       EarlyStopping(patience, state), bars)  # fmt: skip
    finally:
        for b in bars:
            if b is not None:
                b.close()


def _epochs(epoch_fn, state, data, epochs, callback, early, bars):
    """Run epochs up to ``epochs``: check, record, report, maybe stop; ``(state, history)``."""
    history, (bar, step_bar) = [], bars
    for _ in range(int(state.epoch), epochs):
        t0 = time.perf_counter()
        if step_bar is not None:
            step_bar.reset()
        new_state, metrics = epoch_fn(state, *data)
        metrics = jax.device_get(metrics)  # the one host round trip of the epoch
        seconds = time.perf_counter() - t0
        if int(metrics["bad_step"]) >= 0:  # keep the last completed epoch's (finite) state
            raise DivergenceError(int(new_state.epoch), int(metrics["bad_step"]) + 1, state)
        state = new_state
        record = _record(state, metrics, seconds)
        history.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", acc=f"{record['test_accuracy']:.4f}"
            )
        stop = bool(callback(state, record)) if callback is not None else False
        state, stopped_early = early.update(state, record)
        if stopped_early or stop:
            break
    return state, history


def _start_state(model, optimizer, key, state, dtype):
    """A fresh state from ``key``, or ``state`` checked against the model."""
    if state is None:
        if key is None:
            raise ValueError("fit needs key= (e.g. jax.random.key(0)) or a state= to resume")
        return init_state(model, optimizer, key, dtype)
    if hasattr(model, "check_params"):
        model.check_params(state.params)
    _check_model_state(model, state, dtype)
    return state


def _record(state, metrics, seconds):
    """The epoch's ``history`` record from the epoch program's metrics (host values)."""
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
    return record


class EarlyStopping:
    """Stop when the test loss has not improved for ``patience`` epochs; keep the best.

    ``update(state, record) -> (state, stopped)``: when it stops, the returned state carries
    the best epoch's parameters and model state, and the record gains ``early_stopped`` and
    ``best_epoch``. ``patience=None``: never stops.
    """

    def __init__(self, patience, state):
        self.patience = patience
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_params, self.best_model_state = state.params, state.model_state

    def update(self, state, record):
        if self.patience is None:
            return state, False
        if record["test_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = record["test_loss"], record["epoch"]
            self.best_params, self.best_model_state = state.params, state.model_state
        elif record["epoch"] - self.best_epoch >= self.patience:
            record["early_stopped"], record["best_epoch"] = True, self.best_epoch
            return state._replace(params=self.best_params, model_state=self.best_model_state), True
        return state, False


def _check_model_state(model, state, dtype):
    """A resumed state's model state must have the structure a fresh one would."""
    fresh = jax.eval_shape(lambda k: model.initialize(k, dtype)[1], jax.random.key(0))
    want, got = jax.tree.structure(fresh), jax.tree.structure(state.model_state)
    if want != got:
        raise ValueError(
            f"the state's model_state has structure {got}, this model's is {want}: a state "
            f"from another model"
        )


def _param_dtype(params, default):
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return default


def device_data(data, dtype):
    """The data on the device: float inputs in the parameters' dtype, integer ones (token
    ids) as they are; integer labels stay integers, real targets take the dtype."""
    x, y, x_test, y_test = data

    def x_dt(v):
        v = np.asarray(v)
        return v.astype(dtype) if np.issubdtype(v.dtype, np.floating) or v.dtype == bool else v

    def y_dt(v):  # integer labels stay integers; real targets take the parameters' dtype
        v = np.asarray(v)
        return v if np.issubdtype(v.dtype, np.integer) else v.astype(dtype)

    return (
        jnp.asarray(x_dt(x)),
        jnp.asarray(y_dt(y)),
        jnp.asarray(x_dt(x_test)),
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
