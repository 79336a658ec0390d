"""The host loop: ``jbp.fit`` trains any model, one compiled epoch program per epoch.

The epoch itself — shuffle, mini-batches, the scan of optimizer steps, the test metrics — is
one XLA program built by :mod:`jbp.epoch` (or, over several devices, by :mod:`jbp.parallel`).
This module is what happens around it, on the host, once per epoch: the metrics come back in
one transfer, are logged, checked and handed to callbacks; early stopping keeps the best
parameters; progress bars show on a terminal.

Divergence is never silent: a non-finite loss or gradient anywhere in an epoch, or an epoch
whose train loss exceeds ``divergence_threshold`` × the initial loss, discards that epoch
whole, and :class:`DivergenceError` names the epoch and step and carries the last good state
(see :mod:`jbp.stopping`). Data errors are data errors: NaN or ±inf in the data is a
:class:`jbp.data.DataError` before the first step, and labels that skip classes are warned
about (:mod:`jbp.data_checks`).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from jbp import data_checks
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
from jbp.stopping import (  # noqa: F401 - re-exported: fit raises and uses them
    DIVERGENCE_THRESHOLD,
    Best,
    DivergenceError,
    EarlyStopping,
    check_blow_up,
    check_threshold,
    initial_loss,
)
from jbp.util import integer, tree_sha256


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
        data_checks.check_finite(split, x, y)  # NaN in the data: a DataError, not divergence
    data_checks.warn_labels(model, data[1], data[3])


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
    divergence_threshold=DIVERGENCE_THRESHOLD,
    early_stopping=None,
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
      early_stopping: instead of ``patience``, a :class:`EarlyStopping` to continue (e.g.
        built from a checkpoint's :class:`Best`); its best-so-far is updated in place, so
        a callback can save it with the state. A resumed run that had already gone
        ``patience`` epochs without improving returns its best state at once.
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
      divergence_threshold: stop with :class:`DivergenceError` when an epoch's train loss
        exceeds this multiple (≥ 1) of the initial loss, the test loss of the fresh
        parameters (``init_state(model, optimizer, key)``: the same on resume when ``key``
        is given; else the loss of ``state``); ``None``: off. Default
        :data:`jbp.stopping.DIVERGENCE_THRESHOLD` (1000).

    Returns:
      ``(state, history)``: the final :class:`TrainState` and one dict per epoch with
      ``epoch``, ``step``, ``train_loss`` (mean of the epoch's mini-batch losses),
      ``test_loss``, ``test_accuracy``, ``lr`` (of the epoch's last step) and ``seconds``.

    Raises:
      ValueError: bad arguments or data that does not fit the network.
      jbp.data.DataError: NaN or ±inf in the data (naming the split).
      DivergenceError: a non-finite loss or gradient, or a blown-up loss (``err.state``
        holds the last good state).
    """
    check_fit_args(model, data, batch_size, epochs, backward)
    if patience is not None:
        integer("patience", patience)
    check_threshold(divergence_threshold)
    if grad_norms and getattr(model, "batch_coupled", False):
        raise ValueError("grad_norms needs per-example gradients: this model couples examples")
    resumed = state is not None
    state = _start_state(model, optimizer, key, state, dtype)
    x, y, x_test, y_test = device_data(data, _param_dtype(state.params, dtype))
    early = early_stopping if early_stopping is not None else EarlyStopping(patience)
    early.start(state)
    if early.done(int(state.epoch)):  # resumed after early stopping had stopped it
        return early.best_state(state), []
    guard = None
    if divergence_threshold is not None:
        start = init_state(model, optimizer, key, dtype) if resumed and key is not None else state
        guard = (initial_loss(model, start, x_test, y_test), float(divergence_threshold))
    step_bar = None
    if epoch_fn is None:
        epoch_fn, step_bar = _epoch_program(
            model, optimizer, batch_size, devices, parallel, backward, grad_norms,
            progress, x.shape[0],
        )  # fmt: skip
    bars = (_progress_bar(int(state.epoch), epochs) if progress else None, step_bar)
    try:
        return _epochs(epoch_fn, state, (x, y, x_test, y_test), epochs, callback,
                       (early, guard), bars)  # fmt: skip
    finally:
        for b in bars:
            if b is not None:
                b.close()


def _epoch_program(
    model, optimizer, batch_size, devices, parallel, backward, grad_norms, progress, n
):
    """The compiled epoch (sharded with ``devices`` or several processes), and a step bar
    for a long epoch of ``n`` examples on a terminal (``progress``)."""
    par.check_args(devices, parallel)
    if devices is not None or jax.process_count() > 1:
        fn = par.make_epoch_fn(
            model, optimizer, batch_size, devices, parallel, backward, grad_norms
        )
        return fn, None
    step_bar, on_steps = _step_progress(progress, n, batch_size)
    # Deliberately not donate_argnums: the host keeps the previous epoch's state (the last
    # good one a DivergenceError hands back; early stopping's best; a callback's saved copy),
    # and a donated input would be freed under them. The copy it costs is one set of
    # parameters and optimizer moments per epoch, not per step.
    fn = jax.jit(make_epoch(model, optimizer, batch_size, backward=backward,
                            grad_norms=grad_norms, on_steps=on_steps))  # fmt: skip
    return fn, step_bar


def _epochs(epoch_fn, state, data, epochs, callback, stops, bars):
    """Run epochs up to ``epochs``: check, record, report, maybe stop; ``(state, history)``.

    Early stopping sees the epoch before the callback does, so a callback that saves the
    state can save the best-so-far with it; the callback gets the true end-of-epoch state.
    """
    history, (bar, step_bar), (early, guard) = [], bars, stops
    for _ in range(int(state.epoch), epochs):
        t0 = time.perf_counter()
        if step_bar is not None:
            step_bar.reset()
        new_state, metrics = epoch_fn(state, *data)
        metrics = jax.device_get(metrics)  # the one host round trip of the epoch
        seconds = time.perf_counter() - t0
        if int(metrics["bad_step"]) >= 0:  # keep the last completed epoch's (finite) state
            raise DivergenceError(int(new_state.epoch), int(metrics["bad_step"]) + 1, state)
        if guard is not None:
            check_blow_up(int(new_state.epoch), int(new_state.step), state,
                          float(metrics["train_loss"]), *guard)  # fmt: skip
        state = new_state
        record = _record(state, metrics, seconds)
        history.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}", acc=f"{record['test_accuracy']:.4f}"
            )
        stopped_early = early.observe(state, record)
        stop = bool(callback(state, record)) if callback is not None else False
        if stopped_early:
            state = early.best_state(state)
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

    def x_dt(v):  # a copy only when the dtype changes
        v = np.asarray(v)
        floating = np.issubdtype(v.dtype, np.floating) or v.dtype == bool
        return v.astype(dtype, copy=False) if floating else v

    def y_dt(v):  # integer labels stay integers; real targets take the parameters' dtype
        v = np.asarray(v)
        return v if np.issubdtype(v.dtype, np.integer) else v.astype(dtype, copy=False)

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
