"""Layers: values with a forward pass and a hand-written backward pass, side by side.

The contract (every layer, built-in or yours, and every combinator)::

    layer.init(key, in_shape, dtype)              -> (params, state, out_shape)
    layer.forward(params, state, x, *, train, key) -> (y, cache, new_state)
    layer.backward(params, cache, dy)             -> (dparams, dx)
    layer.batch_coupled   # True: the forward mixes examples (batch statistics)
    layer.stochastic      # True: the forward draws random numbers from ``key``

* ``in_shape`` / ``out_shape`` exclude the batch axis: ``x`` has shape ``(batch, *in_shape)``.
  A layer with several inputs or outputs takes or gives a tuple of shapes and of arrays.
* ``state`` is ``()`` for most layers (BatchNorm's running statistics are state, not
  parameters: they are not trained). ``cache`` is any pytree of arrays the backward needs.
* ``backward`` is the plain vector–Jacobian product: given ``dy = ∂C/∂y`` it returns
  ``(∂C/∂params, ∂C/∂x)``. There is **no 1/m and no mask** in a layer: both live in the loss
  head (:mod:`jbp.heads`), which hands the first backward ``dZᴸ`` already multiplied by
  maskᵢ/Σmask. That is what lets norms and residual blocks compose.
* Layers with ``batch_coupled = True`` also accept ``mask=`` in ``forward`` (shape (batch,),
  1 for a real example): padded rows of a ragged last batch must not enter their statistics.
* A layer is a frozen, hashable dataclass: it is a ``jit`` static argument, and two equal
  layers share compiled code. Inside, only ``jnp``: the backward itself stays differentiable.

``jbp.check_layer`` verifies a backward against ``jax.vjp`` of the same forward and against
finite differences, leaf by leaf; write a layer, check it, then train it with ``jbp.fit``.

The dense layer (rows are examples, so Nielsen's column formulas appear transposed; dZ is
δ, one row per example, already carrying the loss's 1/m)::

    Z = X·W + b,   Y = g(Z)
    dZ = dY ⊙ g'(Z)       (BP1/BP2's ⊙ σ'(z) factor)
    dW = Xᵀ·dZ            (BP4: ∂C/∂w = a_in·δ_out, summed over the batch)
    db = Σᵢ dZᵢ           (BP3: ∂C/∂b = δ)
    dX = dZ·Wᵀ            (the (Wˡ⁺¹)ᵀδˡ⁺¹ factor of BP2)

and the parameter-free layers: ``Activation`` Y = g(X), dX = dY ⊙ g'(X); ``Flatten`` reshapes
X to (batch, d₁·d₂·…) and dY back; ``Dropout`` Y = X ⊙ M/(1 − rate), dX = dY ⊙ M/(1 − rate).

Reference: Nielsen, *Neural Networks and Deep Learning*, ch. 2; the ``stax`` layer contract
(``jax.example_libraries.stax``), with a cache and a backward added.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jbp import activations
from jbp.axes import (  # noqa: F401 - re-exported: layers read them from here too
    batch_axis,
    current_batch_axis,
    current_split_axis,
    split_axis,
    split_block,
    whole_batch_bernoulli,
)
from jbp.util import integer, is_integer, real


class Layer:
    """Base class of jbp layers: the contract above, and defaults for the flags.

    Subclasses are ``@dataclasses.dataclass(frozen=True)``; they implement ``init``,
    ``forward`` and ``backward``.
    """

    batch_coupled = False
    stochastic = False
    #: with the batch split over devices, a stochastic layer gets a key of its own on each
    #: device; one that draws for the whole batch and keeps its block (Dropout: so N devices
    #: draw the masks one device would) says ``whole_batch_draws = True`` and gets the same
    #: key everywhere (combinators too: their children decide)
    whole_batch_draws = False

    def init(self, key, in_shape, dtype=jnp.float32):
        raise NotImplementedError

    def forward(self, params, state, x, *, train=False, key=None):
        raise NotImplementedError

    def backward(self, params, cache, dy):
        raise NotImplementedError

    def apply(self, params, state, x, *, train=False, key=None):
        """The forward's output only: ``y``."""
        return self.forward(params, state, x, train=train, key=key)[0]


def call_forward(layer, params, state, x, *, train, key, mask=None):
    """``layer.forward``, passing ``mask`` only to layers that couple examples, and a key of
    its own on each device to a stochastic layer that draws only for its device's rows."""
    block = split_block()
    if (
        key is not None
        and block is not None
        and getattr(layer, "stochastic", False)
        and not getattr(layer, "whole_batch_draws", False)
    ):
        key = jax.random.fold_in(key, block[0])
    if getattr(layer, "batch_coupled", False):
        return layer.forward(params, state, x, train=train, key=key, mask=mask)
    return layer.forward(params, state, x, train=train, key=key)


def shape_tuple(shape, what="in_shape"):
    """A shape as a tuple of ints (a tuple of such tuples for several inputs)."""
    if is_integer(shape):
        return (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:  # a bool, a float, None: not a shape
        raise ValueError(f"{what} must be positive integers, got {what}={shape!r}") from None
    if shape and all(isinstance(s, (tuple, list)) for s in shape):
        return tuple(shape_tuple(s, what) for s in shape)
    if not all(is_integer(s) and s >= 1 for s in shape):
        raise ValueError(f"{what} must be positive integers, got {what}={shape}")
    return tuple(int(s) for s in shape)


# ------------------------------------------------------------ function-style layers
@dataclasses.dataclass(frozen=True)
class FunctionLayer(Layer):
    """A layer made of three plain functions (see :func:`layer`)."""

    init_fn: object
    forward_fn: object
    backward_fn: object
    name: str = None
    batch_coupled: bool = False
    stochastic: bool = False

    def init(self, key, in_shape, dtype=jnp.float32):
        out = self.init_fn(key, in_shape, dtype)
        if not (isinstance(out, tuple) and len(out) == 3):
            raise ValueError(
                f"layer {self.name or self.init_fn.__name__}: init must return "
                f"(params, state, out_shape), got {type(out).__name__}"
            )
        return out

    def forward(self, params, state, x, *, train=False, key=None, **kw):
        return self.forward_fn(params, state, x, train=train, key=key, **kw)

    def backward(self, params, cache, dy):
        return self.backward_fn(params, cache, dy)


def layer(init, forward, backward, *, name=None, batch_coupled=False, stochastic=False):
    """Make a layer from three plain functions, without writing a class.

    Args:
      init: ``init(key, in_shape, dtype) -> (params, state, out_shape)``.
      forward: ``forward(params, state, x, *, train, key) -> (y, cache, new_state)``.
      backward: ``backward(params, cache, dy) -> (dparams, dx)``, the plain VJP.
      name: shown in reports.

    Example, a Swish layer y = x·σ(x) (no parameters)::

        def init(key, in_shape, dtype):
            return (), (), in_shape
        def forward(params, state, x, *, train, key):
            s = jax.nn.sigmoid(x)
            return x * s, (x, s), state
        def backward(params, cache, dy):
            x, s = cache
            return (), dy * (s + x * s * (1 - s))
        swish = jbp.layer(init, forward, backward, name="swish")
    """
    for what, fn in (("init", init), ("forward", forward), ("backward", backward)):
        if not callable(fn):
            raise ValueError(f"layer needs a callable {what}, got {fn!r}")
    return FunctionLayer(init, forward, backward, name, bool(batch_coupled), bool(stochastic))


# ------------------------------------------------------------------------- dense
def dense_fwd(params, x):
    """Z = X·W + b (no bias when ``params`` has none)."""
    z = x @ params["W"]
    return z + params["b"] if "b" in params else z


def dense_bwd(params, dz, x):
    """Return ``({"W": dW, "b": db}, dX)`` for Z = X·W + b: dW = Xᵀ·dZ, db = Σᵢ dZᵢ, dX = dZ·Wᵀ.

    ``dz`` already carries the loss's 1/m (and mask): this is the plain VJP.
    """
    grads = {"W": x.T @ dz}
    if "b" in params:
        grads["b"] = jnp.sum(dz, axis=0)
    return grads, dz @ params["W"].T


#: weight initialisation rules: variance of N(0, var) for a (n_in, n_out) matrix
INITIALIZERS = {
    "he": lambda n_in, n_out: 2.0 / n_in,
    "lecun": lambda n_in, n_out: 1.0 / n_in,
    "glorot": lambda n_in, n_out: 2.0 / (n_in + n_out),
    "standard": lambda n_in, n_out: 1.0,
}


@dataclasses.dataclass(frozen=True)
class Dense(Layer):
    """A fully connected layer Y = g(X·W + b), with an optional fused activation g.

    Args:
      n_out: output width.
      activation: ``None`` (linear) or a name from :data:`jbp.activations.ACTIVATIONS`.
      use_bias: add ``b``.
      initializer: ``"auto"`` (He for relu, LeCun otherwise), ``"he"``, ``"lecun"``,
        ``"glorot"`` or ``"standard"`` (N(0, 1)); biases start at zero.

    Params ``{"W": (n_in, n_out), "b": (n_out,)}``; the input is (batch, n_in).
    """

    n_out: int
    activation: str = None
    use_bias: bool = True
    initializer: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "n_out", integer("n_out", self.n_out, owner="Dense"))
        if self.activation is not None and self.activation not in activations.ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; expected None or one of "
                f"{', '.join(activations.ACTIVATIONS)}"
            )
        if self.initializer != "auto" and self.initializer not in INITIALIZERS:
            raise ValueError(
                f"unknown initializer {self.initializer!r}; expected auto or one of "
                f"{', '.join(INITIALIZERS)}"
            )

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape = shape_tuple(in_shape)
        if len(in_shape) != 1:
            raise ValueError(
                f"Dense takes inputs of shape (batch, n_in), got in_shape={in_shape}; "
                f"put a Flatten() before it"
            )
        n_in = in_shape[0]
        rule = self.initializer
        if rule == "auto":
            rule = "he" if self.activation == "relu" else "lecun"
        std = jnp.asarray(np.sqrt(INITIALIZERS[rule](n_in, self.n_out)), dtype)
        params = {"W": jax.random.normal(key, (n_in, self.n_out), dtype) * std}
        if self.use_bias:
            params["b"] = jnp.zeros((self.n_out,), dtype)
        return params, (), (self.n_out,)

    def forward(self, params, state, x, *, train=False, key=None):
        z = dense_fwd(params, x)
        if self.activation is None:
            return z, (x,), state
        a = activations.ACTIVATIONS[self.activation][0](z)
        return a, (x, z, a), state

    def backward(self, params, cache, dy):
        if self.activation is None:
            (x,), dz = cache, dy
        else:
            x, z, a = cache
            dz = activations.ACTIVATIONS[self.activation][1](dy, z, a)
        return dense_bwd(params, dz, x)


# -------------------------------------------------------------------- activations
@dataclasses.dataclass(frozen=True)
class Activation(Layer):
    """An elementwise (or, for softmax, row-wise) activation Y = g(X); no parameters.

    ``name`` is one of :data:`jbp.activations.ACTIVATIONS`; the backward is
    ``dX = dY ⊙ g'(X)`` written from the output where the derivative allows it.
    """

    name: str

    def __post_init__(self):
        if self.name not in activations.ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.name!r}; expected one of "
                f"{', '.join(activations.ACTIVATIONS)}"
            )

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), shape_tuple(in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        a = activations.ACTIVATIONS[self.name][0](x)
        return a, (x, a), state

    def backward(self, params, cache, dy):
        x, a = cache
        return (), activations.ACTIVATIONS[self.name][1](dy, x, a)


# ------------------------------------------------------------------------ reshape
@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """(batch, d₁, d₂, …) -> (batch, d₁·d₂·…); the backward reshapes dY back."""

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape = shape_tuple(in_shape)
        return (), (), (math.prod(in_shape),)

    def forward(self, params, state, x, *, train=False, key=None):
        # the cache is an empty array that carries the input's shape (static under jit)
        return x.reshape(x.shape[0], -1), jnp.zeros((0, *x.shape[1:]), x.dtype), state

    def backward(self, params, cache, dy):
        return (), dy.reshape((dy.shape[0], *cache.shape[1:]))


# ------------------------------------------------------------------------ dropout
@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout: in training, Y = X ⊙ M / (1 − rate) with M ~ Bernoulli(1 − rate).

    ``rate`` is the probability of *dropping* a unit. The backward is dX = dY ⊙ M / (1 − rate)
    with the same mask (kept in the cache). In evaluation (``train=False``) Y = X, so nothing
    needs rescaling at test time. The key comes from the engine (one per step), so a resumed
    run draws the same masks. Reference: Srivastava et al., JMLR 15 (2014); the inverted form
    of Ng's Deep Learning Specialization, course 2 week 1.
    """

    rate: float = 0.5
    stochastic = True
    whole_batch_draws = True

    def __post_init__(self):
        real("rate", self.rate, low=0, high=1, high_open=True, owner="Dropout")

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), shape_tuple(in_shape)

    def forward(self, params, state, x, *, train=False, key=None):
        if not train or self.rate == 0:
            return x, jnp.ones((), x.dtype), state
        if key is None:
            raise ValueError("Dropout in training needs a key (jbp.fit passes one per step)")
        keep = whole_batch_bernoulli(key, 1 - self.rate, x.shape)
        scale = jnp.where(keep, 1 / (1 - self.rate), 0).astype(x.dtype)
        return x * scale, scale, state

    def backward(self, params, cache, dy):
        return (), dy * cache
