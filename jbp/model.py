"""Models: what ``jbp.fit`` trains. A network of layers with a loss head, and the protocol.

**The model protocol** — everything the engine (:mod:`jbp.epoch`, :func:`jbp.fit`),
checkpoints and the parallel path ask of a model; ``jbp.MLP``, :class:`Network` and the
adapters of :mod:`jbp.adapters` (a plain JAX function, a Flax NNX module) all provide it::

    model.initialize(key, dtype)        -> (params, state)      # state: () unless running stats
    model.train_grad(params, state, x, y, mask=None, *, key=None, backward="manual")
                                        -> (loss, grads, new_state)
    model.evaluate(params, state, x, y, mask=None) -> (loss, accuracy)   # evaluation mode
    model.batch_coupled, model.stochastic, model.backwards  # flags; the backwards it offers
    model.check_data(x, y, split)       # host side: ValueError naming what does not fit
    model.check_params(params)          # host side: ValueError naming the leaf
    model.config()                      # JSON: what a checkpoint must match on resume

``loss`` is the masked mean Σᵢ maskᵢ·Cᵢ / Σmask; ``train_grad`` with ``backward="manual"`` runs
the hand-written backward, ``"autodiff"`` ``jax.grad`` of the same forward.

**Network(layer, head, in_shape)**: any layer (usually a :class:`jbp.Sequential`) whose
output are the logits, and a loss head that owns BP1, the mask and 1/m::

    Z, cache = layer.forward(params, state, X)     C, dZ = head.loss_and_delta(Z, Y, mask)
    grads, dX = layer.backward(params, cache, dZ)   (the layers' plain VJPs, chained)

``net.manual_loss`` is ``net.loss`` with a ``jax.custom_vjp`` whose backward *is* the
hand-written one, so ``jax.grad`` of a jbp model runs it and composes with any JAX code.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jbp import heads as heads_mod
from jbp.layers import call_forward, shape_tuple
from jbp.per_example import EXAMPLES, per_example_grads  # noqa: F401 - re-exported

BACKWARDS = ("manual", "autodiff")


def describe(obj):
    """A JSON description of a layer, head or function: stable across processes.

    Dataclasses become ``{"type": name, field: …}``; functions their ``module.qualname``
    (never a memory address, so a resumed run matches the one that saved).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            d[f.name] = describe(getattr(obj, f.name))
        return d
    if isinstance(obj, (list, tuple)):
        return [describe(o) for o in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if callable(obj):
        return (
            f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
        )
    return type(obj).__name__


def _float_dtype(params):
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.result_type(leaf)
    return None


def _leaf_name(path):
    """A leaf's path as ``0/W`` or ``l2/kernel``."""
    keys = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    return "/".join(map(str, keys)) or "(root)"


def check_like(params, expected, expects="this model expects"):
    """Raise ``ValueError`` naming the first leaf of ``params`` whose structure or shape differs
    from ``expected`` (a pytree of arrays or of ``jax.ShapeDtypeStruct``)."""
    e_leaves, e_tree = jax.tree_util.tree_flatten_with_path(expected)
    try:
        g_leaves, g_tree = jax.tree_util.tree_flatten_with_path(params)
    except Exception as err:  # noqa: BLE001 - anything unflattenable is a mismatch
        raise ValueError(f"params are not a pytree of arrays: {err}") from None
    if g_tree != e_tree:
        raise ValueError(f"params have structure {g_tree}, {expects} {e_tree}")
    for (path, e), (_, g) in zip(e_leaves, g_leaves, strict=True):
        if tuple(jnp.shape(g)) != tuple(e.shape):
            raise ValueError(
                f"parameter {_leaf_name(path)} has shape {tuple(jnp.shape(g))}, {expects} "
                f"{tuple(e.shape)}"
            )


class LayerModel:
    """The model protocol for a layer plus a loss head (``self.layer``, ``self.head``,
    ``self.in_shape``); :class:`Network` and ``jbp.MLP`` are built on it."""

    backwards = BACKWARDS
    whole_batch_draws = True  # its layers get their keys through layers.call_forward

    # -------------------------------------------------------------- structure
    @property
    def batch_coupled(self):
        return bool(getattr(self.layer, "batch_coupled", False))

    @property
    def stochastic(self):
        return bool(getattr(self.layer, "stochastic", False))

    @functools.cached_property
    def _abstract(self):
        """Shapes and dtypes of (params, state, out_shape), without computing anything."""
        box = {}

        def init(k):
            params, state, box["out_shape"] = self.layer.init(k, self.in_shape, jnp.float32)
            return params, state

        params, state = jax.eval_shape(init, jax.random.key(0))
        return params, state, box["out_shape"]  # a plain tuple: static, not traced

    @property
    def out_shape(self):
        """The logits' shape without the batch axis."""
        return tuple(self._abstract[2])

    @property
    def n_out(self):
        return self.out_shape[-1]

    @property
    def n_classes(self):
        """How many integer labels the output accepts: n_out, or 2 for one output unit."""
        return 2 if self.n_out == 1 else self.n_out

    @property
    def n_params(self):
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(self._abstract[0]))

    def initialize(self, key, dtype=jnp.float32):
        """``(params, state)`` for a fresh model."""
        params, state, _ = self.layer.init(key, self.in_shape, dtype)
        return params, state

    def init(self, key, dtype=jnp.float32):
        """Random parameters (the model's state, if any, comes from :meth:`initialize`)."""
        return self.initialize(key, dtype)[0]

    def _state(self, state):
        if state is not None:
            return state
        abstract = self._abstract[1]
        if jax.tree.leaves(abstract):
            raise ValueError(
                f"this model has state ({len(jax.tree.leaves(abstract))} arrays, e.g. running "
                f"statistics): pass state= (from model.initialize or the TrainState)"
            )
        return abstract  # an empty structure: (), lists of ()

    # ----------------------------------------------------------------- checks
    def check_params(self, params):
        """Raise ``ValueError`` unless ``params`` has this model's structure and shapes."""
        check_like(params, self._abstract[0], "this model expects")

    def check_x(self, x, split="the"):
        shape = tuple(np.shape(x))
        if shape[1:] != tuple(self.in_shape):
            raise ValueError(
                f"{split} inputs have shape {shape}, the model expects (batch, "
                f"{', '.join(map(str, self.in_shape))})"
            )

    def check_data(self, x, y, split="train"):
        """Host-side check of a split: input shape, non-empty, target shape and label range."""
        self.check_x(x, f"the {split}")
        if np.shape(x)[0] == 0:
            raise ValueError(f"the {split} split is empty")
        z = jax.ShapeDtypeStruct((np.shape(x)[0], *self.out_shape), jnp.float32)
        heads_mod.to_targets(np.asarray(y), z.shape[0], z.shape[-1], jnp.float32)

    def config(self):
        """JSON description of the model (what a checkpoint must match)."""
        return {
            "model": type(self).__name__,
            "layer": describe(self.layer),
            "head": describe(self.head),
            "in_shape": list(self.in_shape),
        }

    # ---------------------------------------------------------------- forward
    def _x(self, params, x):
        dt = _float_dtype(params)
        if dt is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, dt)
        return jnp.asarray(x)

    def logits(self, params, x, *, state=None, train=False, key=None, mask=None):
        """``(Z, cache, new_state)``: the layer's forward, whose output are the logits."""
        self.check_x(x, "x")
        return call_forward(
            self.layer,
            params,
            self._state(state),
            self._x(params, x),
            train=train,
            key=key,
            mask=mask,
        )

    def apply(self, params, x, *, state=None, train=False, key=None):
        """The model's output A = g(Z) (the head's output activation applied)."""
        return self.head.predict(self.logits(params, x, state=state, train=train, key=key)[0])

    def loss(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        """C = Σᵢ maskᵢ·Cᵢ / Σmask, by the plain forward (what ``jax.grad`` differentiates)."""
        z, _, _ = self.logits(params, x, state=state, train=train, key=key, mask=mask)
        return self.head.loss(z, y, mask)

    def accuracy(self, params, x, y, mask=None, *, state=None):
        """Fraction of (real) examples classified correctly, in evaluation mode."""
        z, _, _ = self.logits(params, x, state=state, train=False, mask=mask)
        return self.head.accuracy(z, y, mask)

    def evaluate(self, params, state, x, y, mask=None):
        """``(loss, accuracy)`` in evaluation mode (running statistics, no dropout)."""
        z, _, _ = self.logits(params, x, state=state, train=False, mask=mask)
        return self.head.loss(z, y, mask), self.head.accuracy(z, y, mask)

    # --------------------------------------------------------------- backward
    def run_backward(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        """The hand-written backward: ``(loss, grads, dX, new_state)``.

        BP1 in the head (with the mask and 1/m), then every layer's VJP in reverse order.
        """
        z, cache, new_state = self.logits(params, x, state=state, train=train, key=key, mask=mask)
        loss, dz = self.head.loss_and_delta(z, y, mask)
        grads, dx = self.layer.backward(params, cache, dz)
        return loss, grads, dx, new_state

    def backward(self, params, x, y, mask=None, **kw):
        """``(loss, grads, dX)`` with dX = ∂loss/∂X, by the hand-written backward."""
        return self.run_backward(params, x, y, mask, **kw)[:3]

    def loss_and_grad(self, params, x, y, mask=None, **kw):
        """``(loss, grads)`` from the hand-written backward; grads has the structure of params."""
        return self.run_backward(params, x, y, mask, **kw)[:2]

    def manual_loss(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        """``net.loss`` whose ``jax.grad`` / ``jax.vjp`` runs the hand-written backward."""
        return _manual_loss(self, train, params, x, y, mask, self._state(state), key)

    def train_grad(self, params, state, x, y, mask=None, *, key=None, backward="manual"):
        """``(loss, grads, new_state)`` of one training step (the engine's entry point)."""
        if backward == "manual":
            loss, grads, _, new_state = self.run_backward(
                params, x, y, mask, state=state, train=True, key=key
            )
            return loss, grads, new_state
        if backward == "autodiff":

            def f(p):
                z, _, s = self.logits(p, x, state=state, train=True, key=key, mask=mask)
                return self.head.loss(z, y, mask), s

            (loss, new_state), grads = jax.value_and_grad(f, has_aux=True)(params)
            return loss, grads, new_state
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")


@dataclasses.dataclass(frozen=True)
class Network(LayerModel):
    """A model from any layer and a loss head.

    Args:
      layer: a layer whose output are the logits, e.g. ``jbp.Sequential(jbp.Dense(64,
        "relu"), jbp.Dense(10))``.
      head: a :class:`jbp.heads.Head` or a name (``"softmax_cross_entropy"``,
        ``"sigmoid_binary_cross_entropy"``, ``"squared_error"``).
      in_shape: one example's input shape, e.g. ``(784,)`` or ``(28, 28, 1)``.

    Example::

        net = jbp.Network(jbp.Sequential(jbp.Flatten(), jbp.Dense(128, "relu"), jbp.Dense(10)),
                          "softmax_cross_entropy", in_shape=(28, 28, 1))
        state, history = jbp.fit(net, jbp.optim.adam(1e-3), data, key=jax.random.key(0))
    """

    layer: object
    head: object = "softmax_cross_entropy"
    in_shape: tuple = None

    def __post_init__(self):
        if not all(callable(getattr(self.layer, m, None)) for m in ("init", "forward", "backward")):
            raise ValueError(f"Network needs a layer (init, forward, backward), got {self.layer!r}")
        if self.in_shape is None:
            raise ValueError("Network needs in_shape=, one example's input shape, e.g. (784,)")
        object.__setattr__(self, "in_shape", shape_tuple(self.in_shape))
        object.__setattr__(self, "head", heads_mod.get(self.head))
        self.head.check_out_shape(self.out_shape)


# ------------------------------------------------------------- custom_vjp bridge
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _manual_loss(model, train, params, x, y, mask, state, key):
    return model.loss(params, x, y, mask, state=state, train=train, key=key)


def _manual_loss_fwd(model, train, params, x, y, mask, state, key):
    loss, grads, dx, _ = model.run_backward(params, x, y, mask, state=state, train=train, key=key)
    return loss, (grads, dx)


def _manual_loss_bwd(model, train, residuals, g):
    grads, dx = residuals
    scale = lambda t: t * g.astype(t.dtype)  # noqa: E731 - chain rule with the output cotangent
    dx = jax.tree.map(
        lambda t: scale(t) if jnp.issubdtype(t.dtype, jnp.inexact) else _float0(t), dx
    )
    return jax.tree.map(scale, grads), dx, None, None, None, None


def _float0(t):  # the cotangent of an integer input (token ids)
    return np.zeros(t.shape, jax.dtypes.float0)


_manual_loss.defvjp(_manual_loss_fwd, _manual_loss_bwd)
