"""Adapters: a plain JAX function or a Flax NNX module as a jbp model.

Both adapters give the model protocol of :mod:`jbp.model`, so ``jbp.fit`` (one device or
``devices=N``), the jbp optimizers, checkpoints, resuming and ``jbp.per_example_grads`` work
on them as on a ``jbp.MLP``. Their backward pass is JAX's: only the loss head's first delta
(BP1, with the mask and the 1/m) is jbp's hand-written one.

**A plain function** — :func:`from_function`::

    def apply(params, x):                       # a batch in, a batch of logits out
        return jnp.tanh(x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]

    def init(key):                              # plain: the adapter casts to the run's dtype
        k1, k2 = jax.random.split(key)
        return {"W1": 0.1 * jax.random.normal(k1, (64, 32)), "b1": jnp.zeros(32),
                "W2": 0.1 * jax.random.normal(k2, (32, 10)), "b2": jnp.zeros(10)}

    model = jbp.adapters.from_function(apply, init, in_shape=(64,))
    state, history = jbp.fit(model, jbp.optim.adam(1e-2), data, key=jax.random.key(0))

It is a :class:`jbp.Network` of one :class:`jbp.Autodiff` layer: ``backward="manual"`` runs
the head's BP1 and then ``jax.vjp`` of ``apply``, ``backward="autodiff"`` is ``jax.grad`` of the
whole loss; both are offered, and they agree to rounding. Two calls with the same functions
give equal (and equally hashed) models; ``config()`` names the functions by
``module.qualname``, stable across processes (a lambda is only ``module.<lambda>``: use ``def``).

**A Flax NNX module** — :func:`from_nnx` (in :mod:`jbp.adapters_nnx`, re-exported here)::

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)
        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    model = jbp.adapters.from_nnx(lambda rngs: Net(rngs), in_shape=(64,))
    # or from_nnx(Net(nnx.Rngs(0)), in_shape=(64,)): an instance, its parameters as they are

The module's parameters (``nnx.Param``) and the rest of its state (``nnx.BatchStat`` running
statistics, …) become plain nested dicts of arrays; training runs it in ``train()`` mode,
evaluation in ``eval()`` mode; ``batch_coupled`` (an ``nnx.BatchNorm`` inside) and
``stochastic`` (RNG streams, reseeded from the engine's key every step) are detected. The
details, including how padded rows and a ``mask`` keyword reach batch statistics, are in
:mod:`jbp.adapters_nnx`. Flax is imported only when ``from_nnx`` is called.

**Backward.** With Z the logits and C the head's loss (masked mean over the batch)::

    "manual"    dZ = ∂C/∂Z (the head's hand-written BP1),  dθ = (∂Z/∂θ)ᵀ·dZ  (``jax.vjp``)
    "autodiff"  dθ = ∇_θ C  (``jax.grad`` of the whole loss)

Both adapters offer both (``model.backwards``); they agree to rounding. Reference: Nielsen,
*Neural Networks and Deep Learning*, ch. 2 (BP1).

**When to write jbp layers instead.** The adapters are for bringing existing JAX code into
jbp's engine. A :class:`jbp.Layer` has its backward written by hand next to its forward, and
``jbp.check_layer`` verifies that backward against ``jax.vjp`` and finite differences, leaf by
leaf; an adapted model has no hand-written backward to check (``jbp.check.check_model`` still
compares its loss gradient with ``jax.grad`` and finite differences). Start with an adapter
(or a :class:`jbp.Autodiff` layer inside a network), then replace it piece by piece with
layers whose backward you wrote and checked.
"""

import dataclasses

import jax.numpy as jnp

from jbp import model as model_mod
from jbp.adapters_nnx import NNXModel, from_nnx
from jbp.adapters_state import cast_floats
from jbp.combinators import Autodiff

BACKWARDS = model_mod.BACKWARDS  # ("manual", "autodiff"): both adapters offer both

__all__ = ["BACKWARDS", "FunctionModel", "InitFn", "NNXModel", "from_function", "from_nnx"]


# ------------------------------------------------------------------ plain function
@dataclasses.dataclass(frozen=True)
class InitFn:
    """``init(key) -> params`` as an :class:`jbp.Autodiff` initializer: called with ``(key,
    in_shape, dtype)``, it casts the floating leaves to ``dtype``. A named, comparable wrapper
    (not a lambda), so ``config()`` names the user's function and equal calls give equal models.
    """

    init: object

    def __call__(self, key, in_shape, dtype=jnp.float32):
        return cast_floats(self.init(key), dtype)


@dataclasses.dataclass(frozen=True)
class FunctionModel(model_mod.Network):
    """A :class:`jbp.Network` made of one :class:`jbp.Autodiff` layer (see :func:`from_function`).

    ``backward="manual"``: the head's BP1, then ``jax.vjp`` of the function;
    ``backward="autodiff"``: ``jax.grad`` of the loss.
    """

    backwards = BACKWARDS


def from_function(apply, init, *, in_shape, loss="softmax_cross_entropy"):
    """A model from a plain JAX function and its initializer.

    Args:
      apply: ``apply(params, x) -> logits`` on a batch (``x`` of shape ``(batch, *in_shape)``,
        logits ``(batch, n_out)``), written with ``jnp``.
      init: ``init(key) -> params``, any pytree of arrays; floating leaves are cast to the
        run's dtype.
      in_shape: one example's input shape, e.g. ``(64,)``.
      loss: a loss head or its name (``"softmax_cross_entropy"``,
        ``"sigmoid_binary_cross_entropy"``, ``"squared_error"``), applied to the logits.

    Returns:
      a :class:`FunctionModel`; it raises ``ValueError`` at once when ``apply`` does not give
      logits of shape (batch, n_out) that fit the head.
    """
    if not callable(apply) or not callable(init):
        raise ValueError(
            f"from_function needs apply(params, x) and init(key), got apply={apply!r}, "
            f"init={init!r}"
        )
    name = getattr(apply, "__qualname__", None) or type(apply).__name__
    return FunctionModel(Autodiff(apply, init_fn=InitFn(init), name=name), loss, in_shape)
