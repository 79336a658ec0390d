"""From a :class:`jbp.config.RunConfig` to the things a run needs: :func:`build`.

``build(config)`` loads the data, makes the model (``mlp``: a :class:`jbp.MLP` whose ends are
inferred from the data; ``cnn``: :func:`jbp.models.cnn`; ``module:function``: a user's model)
and the optimizer with its learning-rate schedule (epoch-aware: it needs the number of steps
per epoch, hence the data first). ``jbp train``, ``jbp bench`` and scripts all build runs here,
so a recipe means the same thing everywhere. A bad value raises ``ValueError`` naming it.

Before anything is allocated, ``build`` also refuses data holding NaN or ±inf
(:func:`jbp.data_checks.check_finite`, a ``DataError`` naming the split) and a model whose
parameters and optimizer state cannot fit in memory (:func:`jbp.memory.check_fits`, with
the estimate).
"""

import inspect
import math
from typing import NamedTuple

from jbp import config as config_mod


class Recipe(NamedTuple):
    model: object  # a jbp model (the model protocol, see jbp.model)
    optimizer: object  # an optax.GradientTransformation
    data: object  # a jbp.data.Dataset, shaped for the model
    batch_size: int | None  # None: the whole training set (batch gradient descent)
    epochs: int
    dtype: object  # jnp.float32 | jnp.float64
    config: config_mod.RunConfig  # resolved: every preset value filled in


def load_data(config: config_mod.RunConfig):
    """The run's data set, checked (finite values, named split); NumPy only, so it can run
    before JAX's devices and processes are set up (``build(config, data=…)`` then uses it)."""
    from jbp import data as data_mod
    from jbp import data_checks

    c = config_mod.resolve(config)
    images = not c.is_mlp and c.data != "moons"  # (n, rows, cols, 1): a model takes its shape
    ds = data_mod.load(c.data, images=images)
    for split, x in (("training", ds.x_train), ("test", ds.x_test)):
        if len(x) == 0:
            raise data_mod.DataError(f"data {c.data!r}: the {split} split is empty")
    data_checks.check_finite("train", ds.x_train, ds.y_train)
    data_checks.check_finite("test", ds.x_test, ds.y_test)
    return ds


def build(config: config_mod.RunConfig, *, data=None) -> Recipe:
    """The model, optimizer, data, batch size, epochs and dtype of the run ``config``.

    ``data``: the data set :func:`load_data` returned for ``config`` (loaded here if None).
    """
    import jax
    import jax.numpy as jnp

    from jbp import memory, optim, schedules

    c = config_mod.resolve(config)
    if c.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if c.dtype == "float64" else jnp.float32
    ds = load_data(c) if data is None else data
    model, ds = _mlp(c, ds) if c.is_mlp else _model(c, ds)
    n = ds.x_train.shape[0]
    batch_size = None if c.batch_size == "full" else int(c.batch_size)
    steps_per_epoch = 1 if batch_size is None else math.ceil(n / min(batch_size, n))
    sched = schedules.get(
        c.schedule, c.lr, steps_per_epoch=steps_per_epoch, **_kwargs(c.schedule_options)
    )
    lr = c.lr if schedules.options(c.schedule) == () else sched  # constant: a plain float
    optimizer = optim.get(c.optimizer, lr, **_kwargs(c.optimizer_options))
    copies = 1  # simulated CPU devices each hold a replica, all in the host's memory
    if c.devices and jax.default_backend() == "cpu":
        copies = min(int(c.devices), jax.local_device_count())
    memory.check_fits(model, optimizer, dtype, copies)
    return Recipe(model, optimizer, ds, batch_size, c.epochs, dtype, c)


def _kwargs(pairs):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in pairs}


def _mlp(c, ds):
    """``mlp``: a ``jbp.MLP`` with ``c.layers``, its ``None`` ends taken from the data."""
    from jbp import data as data_mod
    from jbp import mlp

    n_in, n_out = data_mod.n_features(ds), data_mod.n_classes(ds)
    if n_out == 2 and c.output == "sigmoid":
        n_out = 1
    sizes = list(c.layers)
    if len(sizes) < 2:
        raise ValueError(f"--layers needs at least an input and an output width, got {sizes}")
    sizes[0] = n_in if sizes[0] is None else sizes[0]
    sizes[-1] = n_out if sizes[-1] is None else sizes[-1]
    if sizes[0] != n_in:
        raise ValueError(
            f"--layers starts with {sizes[0]} but data {c.data!r} has {n_in} input features"
        )
    if sizes[-1] != n_out and not (sizes[-1] == 1 and n_out == 2):
        raise ValueError(f"--layers ends with {sizes[-1]} but data {c.data!r} has {n_out} classes")
    return mlp.MLP(tuple(sizes), c.activation, c.output, c.cost), ds


MLP_ONLY = ("layers", "activation", "output", "cost")


def _model(c, ds):
    """``cnn`` or ``module:function``: a jbp model, and the data shaped for it."""
    from jbp import data as data_mod
    from jbp import models

    given = [f"--{f}" for f in MLP_ONLY if getattr(c, f) is not None]
    if given:
        raise ValueError(
            f"{', '.join(given)} shape the MLP; --model {c.model} defines its own layers"
        )
    n_classes = data_mod.n_classes(ds)
    if c.model == "cnn":
        if ds.x_train.ndim == 2 and data_mod.n_features(ds) == 2:
            raise ValueError(f"--model cnn needs images; data {c.data!r} has 2 features")
        net = models.cnn(in_shape=image_shape(ds), n_classes=n_classes)
    else:
        net = _user_model(c.model, ds, n_classes)
    in_shape = getattr(net, "in_shape", None)
    if in_shape is not None:
        ds = data_mod.as_shape(ds, in_shape)
    return net, ds


def _user_model(target, ds, n_classes):
    """``module:function`` (or ``file.py:function``): its model, or the model it returns."""
    from jbp import check

    if ":" not in target:
        raise ValueError(f"--model must be mlp, cnn or module:function, got {target!r}")
    mod, _, attr = target.rpartition(":")
    fn = check.load_module_attribute(mod, attr, target)
    if not callable(fn) or hasattr(fn, "train_grad"):
        net = fn
    else:
        accepted = inspect.signature(fn).parameters
        kw = {"in_shape": image_shape(ds), "n_classes": n_classes}
        net = fn(**{k: v for k, v in kw.items() if k in accepted})
    if not callable(getattr(net, "train_grad", None)):
        raise ValueError(
            f"--model {target} gave {type(net).__name__}, not a jbp model (jbp.Network, "
            f"jbp.MLP, jbp.adapters.from_function / from_nnx)"
        )
    return net


def image_shape(ds):
    """One example's shape as an image: (h, w, c) kept, a square of pixels made (h, h, 1)."""
    shape = ds.x_train.shape[1:]
    if len(shape) == 3:
        return tuple(shape)
    side = math.isqrt(math.prod(shape))
    if side * side != math.prod(shape):
        return tuple(shape)
    return (side, side, 1)
