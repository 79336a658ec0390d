"""The dense workloads of ``jbp bench`` and their contenders: jbp and what a user would write.

A :class:`Workload` is a stack of dense layers (hidden activation, softmax output, mean
cross-entropy), an optimizer and a batch size. Every contender trains it on the same data
from the same fresh parameters (:func:`init_params`), and exposes::

    runner.epoch(budget_s=None) -> examples trained

which shuffles the training set, trains on it mini-batch by mini-batch and returns once the
result is on hand (``block_until_ready``). Contenders whose inner loop is Python may stop
early, at a whole mini-batch, once ``budget_s`` seconds have passed; programs compiled for a
whole epoch always finish it. ``epoch_size`` is what a whole epoch trains.

Contenders (names as in the table, :data:`CONTENDERS`):

* ``jbp-manual`` / ``jbp-autodiff``: jbp's epoch program (:func:`jbp.train.make_epoch`, the
  one ``jbp.fit`` runs), with the hand-written backward or ``jax.grad``. Its per-epoch test
  evaluation gets a one-batch test set, so it does the same work as the others.
* ``jax-scan``: the fastest idiom a JAX user writes by hand: ``jax.value_and_grad`` and
  ``optax`` inside ``lax.scan`` over the epoch's mini-batches, jitted, state donated.
* ``jax-loop``: the same step jitted on its own and called from a Python loop.
* ``flax-nnx``: ``nnx.Linear`` layers and ``nnx.Optimizer`` with optax; the step is
  ``nnx.split``/``nnx.merge`` around ``jax.jit`` (the fast path of Flax's performance guide).
  Flax is imported only when this contender is built.
* ``torch`` and ``numpy``: the eager contenders of :mod:`jbp.bench.eager`.
"""

import math
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jbp.bench.eager import NumpyRunner, TorchRunner, torch_available

CONTENDERS = ("jbp-manual", "jbp-autodiff", "jax-scan", "jax-loop", "flax-nnx", "torch", "numpy")
__all__ = ["CONTENDERS", "Workload", "init_params", "make_runner", "torch_available"]


class Workload(NamedTuple):
    """A network, an optimizer and a batch size: what every contender trains."""

    name: str
    sizes: tuple
    activation: str
    optimizer: str  # "sgd" | "adam"
    lr: float
    batch: int

    @property
    def weights(self):
        """Number of weights (biases excluded): the matmul FLOPs are 6·weights per example."""
        return sum(i * o for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def label(self):
        return (
            f"({self.name}) {'-'.join(map(str, self.sizes))} {self.activation} "
            f"{self.optimizer} b{self.batch}"
        )


def init_params(sizes, activation, seed, dtype=np.float32):
    """Fresh parameters shared by every contender: He (relu) / LeCun normal, zero biases."""
    rng = np.random.default_rng(seed)
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        hidden = i < len(sizes) - 2
        var = 2.0 / n_in if (hidden and activation == "relu") else 1.0 / n_in
        w = rng.standard_normal((n_in, n_out)).astype(np.float32) * np.float32(math.sqrt(var))
        params.append({"W": w.astype(dtype), "b": np.zeros((n_out,), dtype)})
    return params


# ------------------------------------------------------------------------------ jbp
class JbpRunner:
    """jbp's own epoch program, as ``jbp.fit`` compiles it."""

    def __init__(self, w, x, y, params, backward, dtype):
        from jbp import mlp, optim, train

        self.net = mlp.MLP(w.sizes, w.activation, "softmax", "cross_entropy")
        self.opt = optim.sgd(w.lr) if w.optimizer == "sgd" else optim.adam(w.lr)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        base = train.init_state(self.net, self.opt, jax.random.key(0), dtype)
        self.state = base._replace(params=params, opt_state=self.opt.init(params))
        self.epoch_fn = jax.jit(train.make_epoch(self.net, self.opt, w.batch, backward=backward))
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)
        self.xt, self.yt = self.x[: w.batch], self.y[: w.batch]
        self.n = self.epoch_size = x.shape[0]  # jbp pads and masks a ragged last batch

    def epoch(self, budget_s=None):
        self.state, metrics = self.epoch_fn(self.state, self.x, self.y, self.xt, self.yt)
        jax.block_until_ready(metrics)
        return self.n


# ------------------------------------------------------------------ hand-rolled JAX
_ACT = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def _jax_loss(activation):
    act = _ACT[activation]

    def loss(params, x, y):
        for p in params[:-1]:
            x = act(x @ p["W"] + p["b"])
        logits = x @ params[-1]["W"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _optax_optimizer(w):
    return optax.sgd(w.lr) if w.optimizer == "sgd" else optax.adam(w.lr)


def _jax_step(w):
    loss_fn, opt = _jax_loss(w.activation), _optax_optimizer(w)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, opt


def shuffle(key, x, y, batch):
    """The usual idiom: permute, drop the ragged tail, reshape to (batches, B, ...)."""
    nb = x.shape[0] // batch
    perm = jax.random.permutation(key, x.shape[0])[: nb * batch]
    return x[perm].reshape(nb, batch, *x.shape[1:]), y[perm].reshape(nb, batch)


class JaxScanRunner:
    """``jax.value_and_grad`` + optax in ``lax.scan``: one jitted program per epoch."""

    def __init__(self, w, x, y, params, dtype):
        step, opt = _jax_step(w)
        batch = w.batch

        def epoch(params, opt_state, key, x, y):
            key, sub = jax.random.split(key)
            xb, yb = shuffle(sub, x, y, batch)

            def body(carry, b):
                p, s, loss = step(*carry, *b)
                return (p, s), loss

            (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xb, yb))
            return params, opt_state, key, losses.mean()

        self.epoch_fn = jax.jit(epoch, donate_argnums=(0, 1))
        self.act = _ACT[w.activation]
        self.params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        self.opt_state = opt.init(self.params)
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)
        self.n = self.epoch_size = (x.shape[0] // batch) * batch

    def epoch(self, budget_s=None):
        self.params, self.opt_state, self.key, loss = self.epoch_fn(
            self.params, self.opt_state, self.key, self.x, self.y
        )
        jax.block_until_ready(loss)
        return self.n

    def accuracy(self, x, y):
        params = jax.tree.map(jnp.asarray, self.params)
        a = jnp.asarray(x, self.x.dtype)
        for p in params[:-1]:
            a = self.act(a @ p["W"] + p["b"])
        logits = a @ params[-1]["W"] + params[-1]["b"]
        return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


class StepLoop:
    """An epoch as a Python loop over a jitted step; subclasses set ``_step`` and the state."""

    def epoch(self, budget_s=None):
        t0 = time.perf_counter()
        self.key, sub = jax.random.split(self.key)
        xb, yb = self.shuffle(sub, self.x, self.y, self.batch)
        done = 0
        for i in range(xb.shape[0]):
            loss = self._step(xb[i], yb[i])
            done += self.batch
            # Checking the clock needs no device sync; the last step is waited for below.
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        jax.block_until_ready(loss)
        return done


class JaxLoopRunner(StepLoop):
    """The same step jitted on its own, called once per mini-batch from Python."""

    def __init__(self, w, x, y, params, dtype):
        step, opt = _jax_step(w)
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.shuffle = jax.jit(shuffle, static_argnums=3)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        self.opt_state = opt.init(self.params)
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)

    def _step(self, x, y):
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, x, y)
        return loss


# -------------------------------------------------------------------------- Flax NNX
class FlaxRunner(StepLoop):
    """Flax NNX + optax; ``nnx.split``/``merge`` around one ``jax.jit`` step."""

    def __init__(self, w, x, y, params, dtype):
        from flax import nnx

        act = _ACT[w.activation]

        class Net(nnx.Module):
            def __init__(self, sizes, rngs):
                self.layers = nnx.List(
                    [
                        nnx.Linear(i, o, rngs=rngs, param_dtype=dtype, dtype=dtype)
                        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
                    ]
                )

            def __call__(self, x):
                for layer in self.layers[:-1]:
                    x = act(layer(x))
                return self.layers[-1](x)

        model = Net(w.sizes, nnx.Rngs(0))
        for layer, p in zip(model.layers, params, strict=True):  # the shared fresh params
            layer.kernel[...] = jnp.asarray(p["W"], dtype)
            layer.bias[...] = jnp.asarray(p["b"], dtype)
        self._setup(model, _optax_optimizer(w), w, x, y, dtype)

    def _setup(self, model, tx, w, x, y, dtype):
        """Split (model, optimizer) and jit the step: shared with the CNN's Flax contender."""
        from flax import nnx

        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        self.graphdef, self.nstate = nnx.split((model, optimizer))
        self.step = jax.jit(nnx_step, static_argnums=0, donate_argnums=1)
        self.shuffle = jax.jit(shuffle, static_argnums=3)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)

    def _step(self, x, y):
        self.nstate, loss = self.step(self.graphdef, self.nstate, x, y)
        return loss


def nnx_step(graphdef, nstate, x, y):
    """One Flax NNX training step on the split (model, optimizer): the performance guide's
    fast path, ``nnx.merge`` → ``nnx.value_and_grad`` → ``optimizer.update`` → ``nnx.state``."""
    from flax import nnx

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    model, optimizer = nnx.merge(graphdef, nstate)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


def _jbp(backward):
    return lambda w, x, y, params, dtype: JbpRunner(w, x, y, params, backward, dtype)


_RUNNERS = {
    "jbp-manual": _jbp("manual"),
    "jbp-autodiff": _jbp("autodiff"),
    "jax-scan": JaxScanRunner,
    "jax-loop": JaxLoopRunner,
    "flax-nnx": FlaxRunner,
    "torch": TorchRunner,
    "numpy": NumpyRunner,
}


def make_runner(name, w, x, y, params, dtype):
    """Build contender ``name`` for workload ``w`` on data ``(x, y)`` from ``params``."""
    if name not in _RUNNERS:
        raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(CONTENDERS)}")
    return _RUNNERS[name](w, x, y, params, dtype)
