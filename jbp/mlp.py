"""``jbp.MLP``: a multilayer perceptron whose backward pass is written by hand (BP1–BP4).

A network is a frozen, hashable *spec* (safe as a ``jit`` static argument); its parameters
are a separate pytree, a list with one ``{"W": (n_in, n_out), "b": (n_out,)}`` per layer.

Forward (layer l = 1 … L, rows are examples)::

    Zˡ = Aˡ⁻¹·Wˡ + bˡ,   Aˡ = gˡ(Zˡ),   A⁰ = X,   C = 1/m Σᵢ C(Aᴸᵢ, Yᵢ)

Backward, dZ-centred and vectorised over the mini-batch of m examples::

    BP1  dZᴸ = ∇ₐC ⊙ g'(Zᴸ)            (fused: Aᴸ − Y for sigmoid+BCE and softmax+CE)
    BP2  dZˡ = (dZˡ⁺¹·Wˡ⁺¹ᵀ) ⊙ g'(Zˡ)
    BP3  dbˡ = 1/m · Σᵢ dZˡᵢ
    BP4  dWˡ = 1/m · Aˡ⁻¹ᵀ·dZˡ

The network is a :class:`jbp.Network` in all but name: a :class:`jbp.Sequential` of
:class:`jbp.Dense` layers (hidden activations fused into them) and a loss head that owns
BP1, the mask and 1/m (:mod:`jbp.heads`), so the layers' backward passes are plain VJPs.

``net.loss`` is the plain forward computation (the reference that ``jax.grad`` differentiates);
``net.loss_and_grad`` is the hand-written backward; ``net.manual_loss`` is ``net.loss`` with a
``jax.custom_vjp`` whose backward *is* ``loss_and_grad``, so ``jax.grad`` of a jbp model runs
the manual backward and composes with any JAX code.

Masking: every loss takes an optional ``mask`` of shape (m,) (1 for a real example, 0 for
padding); the loss is then Σᵢ maskᵢ·Cᵢ / Σᵢ maskᵢ and padded rows contribute nothing to any
gradient. This lets a ragged last mini-batch share one compiled step with the others.

Reference: Nielsen, *Neural Networks and Deep Learning*, ch. 2; Ng, *Deep Learning
Specialization*, course 1 week 4 (dZ, dW = 1/m·dZ·Aᵀ, db = 1/m·Σ dZ).
"""

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from jbp import activations, heads
from jbp.combinators import Sequential
from jbp.layers import INITIALIZERS as _RULES
from jbp.layers import Dense
from jbp.model import LayerModel, per_example_grads
from jbp.util import is_integer

INITIALIZERS = ("auto", *_RULES)


@dataclasses.dataclass(frozen=True)
class MLP(LayerModel):
    """A fully connected network spec.

    Args:
      sizes: layer widths, input first, e.g. ``(64, 30, 10)``; at least two, all positive ints.
      activation: hidden-layer activation, one of ``"sigmoid" | "tanh" | "relu" | "identity"``,
        or a tuple with one per hidden layer.
      output: output activation, ``"identity" | "sigmoid" | "softmax"``.
      cost: the per-example cost C, ``"squared_error" | "binary_cross_entropy" |
        "cross_entropy"``; the cross-entropies need a sigmoid / softmax output respectively.
      initializer: weight initialisation. ``"auto"`` (default) is He, N(0, 2/n_in), for a
        layer followed by relu and LeCun, N(0, 1/n_in), otherwise; ``"he"``, ``"lecun"``,
        ``"glorot"`` (N(0, 2/(n_in + n_out))) apply one rule to every layer; ``"standard"``
        is N(0, 1) as in Nielsen's first network. Biases start at zero.

    Example::

        net = jbp.MLP((64, 30, 10), "sigmoid", "softmax", "cross_entropy")
        params = net.init(jax.random.key(0))
        loss, grads = net.loss_and_grad(params, x, labels)
    """

    sizes: tuple
    activation: object = "sigmoid"
    output: str = "softmax"
    cost: str = "cross_entropy"
    initializer: str = "auto"

    def __post_init__(self):
        sizes = self.sizes
        if isinstance(sizes, str) or not hasattr(sizes, "__len__"):
            raise ValueError(f"sizes must be a sequence of layer widths, got sizes={sizes!r}")
        sizes = tuple(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least an input and an output width, got {sizes}")
        if not all(is_integer(s) and s >= 1 for s in sizes):
            raise ValueError(f"sizes must be positive integers, got sizes={sizes}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        n_hidden = len(sizes) - 2
        acts = self.activation
        if isinstance(acts, str):
            acts = (acts,) * n_hidden
        else:
            acts = tuple(acts)
            if len(acts) != n_hidden:
                raise ValueError(
                    f"activation needs one name per hidden layer ({n_hidden} for sizes="
                    f"{sizes}), got {len(acts)}: {acts}"
                )
        for a in acts:
            if a not in activations.HIDDEN:
                raise ValueError(
                    f"unknown activation {a!r}; expected one of {', '.join(activations.HIDDEN)}"
                )
        if not isinstance(self.activation, str):
            object.__setattr__(self, "activation", acts)
        heads.Head(self.output, self.cost)  # validates the output and the cost, and their pair
        if self.output == "softmax" and sizes[-1] < 2:
            raise ValueError(f"a softmax output needs at least 2 units, got sizes={sizes}")
        if self.initializer not in INITIALIZERS:
            raise ValueError(
                f"unknown initializer {self.initializer!r}; expected one of "
                f"{', '.join(INITIALIZERS)}"
            )

    # ----------------------------------------------------------------- structure
    @property
    def hidden_activations(self):
        """One activation name per hidden layer."""
        if isinstance(self.activation, str):
            return (self.activation,) * (len(self.sizes) - 2)
        return tuple(self.activation)

    @property
    def layer_activations(self):
        """One activation name per layer (hidden layers, then the output)."""
        return self.hidden_activations + (self.output,)

    @property
    def n_params(self):
        """Number of weights and biases."""
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def n_classes(self):
        """How many integer labels the output accepts: n_out, or 2 for one sigmoid/identity unit."""
        return 2 if self.sizes[-1] == 1 else self.sizes[-1]

    @functools.cached_property
    def layer(self):
        """The network as layers: ``Sequential(Dense(n₁, g₁), …, Dense(n_L))``, logits out.

        ``"auto"`` initialisation resolves per layer in :class:`jbp.Dense`: He before relu,
        LeCun otherwise (the output layer, whose activation is the head's, included).
        """
        acts = self.hidden_activations + (None,)
        return Sequential(
            *(
                Dense(n, act, initializer=self.initializer)
                for n, act in zip(self.sizes[1:], acts, strict=True)
            )
        )

    @functools.cached_property
    def head(self):
        """The loss head: the output activation and the cost, with the fused BP1."""
        return heads.Head(self.output, self.cost)

    @property
    def in_shape(self):
        return (self.sizes[0],)

    def init(self, key, dtype=jnp.float32):
        """Random parameters: a list of ``{"W": (n_in, n_out), "b": (n_out,)}`` per layer."""
        return self.layer.init(key, self.in_shape, dtype)[0]

    def initialize(self, key, dtype=jnp.float32):
        return self.init(key, dtype), self._abstract[1]

    # ------------------------------------------------------------------ checking
    def check_params(self, params):
        """Raise ``ValueError`` unless ``params`` has this network's layer shapes."""
        if not isinstance(params, (list, tuple)) or len(params) != len(self.sizes) - 1:
            raise ValueError(
                f"params must be a list of {len(self.sizes) - 1} layers for sizes={self.sizes}, "
                f"got {type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}"
            )
        for l, (p, n_in, n_out) in enumerate(
            zip(params, self.sizes[:-1], self.sizes[1:], strict=True), start=1
        ):
            if jnp.shape(p["W"]) != (n_in, n_out) or jnp.shape(p["b"]) != (n_out,):
                raise ValueError(
                    f"layer {l} expects W {(n_in, n_out)} and b {(n_out,)}, got W "
                    f"{jnp.shape(p['W'])} and b {jnp.shape(p['b'])}"
                )

    def _check_x(self, x):
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != self.sizes[0]:
            raise ValueError(
                f"x must have shape (batch, {self.sizes[0]}) for sizes={self.sizes}, "
                f"got {jnp.shape(x)}"
            )

    def targets(self, y, m, dtype):
        """Dense targets T of shape (m, n_out) from labels (m,) or targets (m, n_out).

        Integer labels become one-hot rows (or a single 0/1 column for one output unit).
        Label ranges are checked whenever ``y`` is concrete (not inside ``jit``).
        """
        return heads.to_targets(y, m, self.sizes[-1], dtype)

    def check_x(self, x, split="x"):
        if np.ndim(x) != 2 or np.shape(x)[1] != self.sizes[0]:
            if split == "x":
                raise ValueError(
                    f"x must have shape (batch, {self.sizes[0]}) for sizes={self.sizes}, "
                    f"got {np.shape(x)}"
                )
            raise ValueError(
                f"{split} inputs have shape {np.shape(x)} but the network's input width is "
                f"{self.sizes[0]} (sizes={self.sizes})"
            )

    _check_x = check_x

    def config(self):
        return {
            "sizes": list(self.sizes),
            "activation": self.activation
            if isinstance(self.activation, str)
            else list(self.activation),
            "output": self.output,
            "cost": self.cost,
        }


__all__ = ["MLP", "per_example_grads"]
