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

import jax
import jax.numpy as jnp
import numpy as np

from jbp import activations, layers, losses

INITIALIZERS = ("auto", "he", "lecun", "glorot", "standard")


@dataclasses.dataclass(frozen=True)
class MLP:
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
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
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
        if self.output not in activations.OUTPUTS:
            raise ValueError(
                f"unknown output {self.output!r}; expected one of {', '.join(activations.OUTPUTS)}"
            )
        if self.cost not in losses.COSTS:
            raise ValueError(
                f"unknown cost {self.cost!r}; expected one of {', '.join(losses.COSTS)}"
            )
        fits = losses.COSTS[self.cost][3]
        if self.output not in fits:
            raise ValueError(
                f"cost {self.cost!r} does not fit output {self.output!r}: it needs output "
                f"{' or '.join(repr(f) for f in fits)}"
            )
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

    def init(self, key, dtype=jnp.float32):
        """Random parameters: a list of ``{"W": (n_in, n_out), "b": (n_out,)}`` per layer."""
        params = []
        keys = jax.random.split(key, len(self.sizes) - 1)
        for k, n_in, n_out, act in zip(
            keys, self.sizes[:-1], self.sizes[1:], self.layer_activations, strict=True
        ):
            rule = self.initializer
            if rule == "auto":
                rule = "he" if act == "relu" else "lecun"
            var = {"he": 2.0 / n_in, "lecun": 1.0 / n_in, "glorot": 2.0 / (n_in + n_out)}.get(
                rule, 1.0
            )
            w = jax.random.normal(k, (n_in, n_out), dtype) * jnp.asarray(np.sqrt(var), dtype)
            params.append({"W": w, "b": jnp.zeros((n_out,), dtype)})
        return params

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
        n_out = self.sizes[-1]
        shape = jnp.shape(y)
        if shape not in ((m,), (m, n_out)):
            raise ValueError(
                f"y must be integer labels of shape ({m},) or targets of shape ({m}, {n_out}), "
                f"got {shape}"
            )
        integer = jnp.issubdtype(jnp.result_type(y), jnp.integer)
        if len(shape) == 1 and integer:
            if not isinstance(y, jax.core.Tracer) and m > 0:
                lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
                if lo < 0 or hi >= self.n_classes:
                    raise ValueError(
                        f"labels must be in [0, {self.n_classes - 1}] for {n_out} output "
                        f"unit(s), got labels in [{lo}, {hi}]"
                    )
            if n_out == 1:
                return jnp.asarray(y, dtype)[:, None]
            return jax.nn.one_hot(y, n_out, dtype=dtype)
        if len(shape) == 1:
            if n_out != 1:
                raise ValueError(
                    f"real-valued y of shape {shape} needs 1 output unit, the network has {n_out}; "
                    f"pass integer labels or targets of shape ({m}, {n_out})"
                )
            return jnp.asarray(y, dtype)[:, None]
        return jnp.asarray(y, dtype)

    # ------------------------------------------------------------------- forward
    def _forward(self, params, x):
        """Return the caches ``[(A_prev, Z, A)]`` of every layer."""
        self._check_x(x)
        a = jnp.asarray(x, params[0]["W"].dtype)
        caches = []
        for p, act in zip(params, self.layer_activations, strict=True):
            fwd, _ = activations.ACTIVATIONS[act]
            z = layers.dense_fwd(p, a)
            caches.append((a, z, fwd(z)))
            a = caches[-1][2]
        return caches

    def apply(self, params, x):
        """The network's output Aᴸ for a batch ``x`` of shape (batch, n_in)."""
        return self._forward(params, x)[-1][2]

    def _per_example(self, params, x, y):
        caches = self._forward(params, x)
        _, z, a = caches[-1]
        t = self.targets(y, jnp.shape(x)[0], a.dtype)
        return losses.COSTS[self.cost][0](z, a, t), caches, t

    @staticmethod
    def _reduce(per, mask):
        if mask is None:
            return jnp.mean(per), 1.0 / per.shape[0]
        mask = jnp.asarray(mask, per.dtype)
        inv_m = 1.0 / jnp.maximum(jnp.sum(mask), 1)
        return jnp.sum(per * mask) * inv_m, inv_m

    def loss(self, params, x, y, mask=None):
        """C = 1/m Σᵢ C(Aᴸᵢ, Yᵢ), the mean per-example cost (masked rows excluded)."""
        per, _, _ = self._per_example(params, x, y)
        return self._reduce(per, mask)[0]

    def accuracy(self, params, x, y, mask=None):
        """Fraction of examples whose predicted class matches the label (argmax, or 0.5 cut)."""
        a = self.apply(params, x)
        t = self.targets(y, jnp.shape(x)[0], a.dtype)
        if a.shape[-1] == 1:
            hit = (a[:, 0] > 0.5) == (t[:, 0] > 0.5)
        else:
            hit = jnp.argmax(a, -1) == jnp.argmax(t, -1)
        return self._reduce(hit.astype(a.dtype), mask)[0]

    # ------------------------------------------------------------------ backward
    def backward(self, params, x, y, mask=None):
        """The hand-written backward: ``(loss, grads, dX)`` with dX = ∂loss/∂X.

        Implements BP1–BP4 on the whole mini-batch (see the module docstring).
        """
        per, caches, t = self._per_example(params, x, y)
        loss, inv_m = self._reduce(per, mask)
        _, z, a = caches[-1]
        cost, cost_bwd, fused, _ = losses.COSTS[self.cost]
        if self.output in fused:  # BP1, fused: dZᴸ = Aᴸ − Y
            dz = fused[self.output](z, a, t)
        else:  # BP1: dZᴸ = ∇ₐC ⊙ g'(Zᴸ)
            dz = activations.ACTIVATIONS[self.output][1](cost_bwd(z, a, t), z, a)
        if mask is not None:
            dz = dz * jnp.asarray(mask, dz.dtype)[:, None]
        grads = [None] * len(params)
        for l in reversed(range(len(params))):
            a_prev = caches[l][0]
            grads[l], da_prev = layers.dense_bwd(params[l], dz, a_prev, inv_m)  # BP3, BP4
            if l > 0:  # BP2: dZˡ = (dZˡ⁺¹·Wˡ⁺¹ᵀ) ⊙ g'(Zˡ)
                _, z_prev, _ = caches[l - 1]
                act_bwd = activations.ACTIVATIONS[self.layer_activations[l - 1]][1]
                dz = act_bwd(da_prev, z_prev, a_prev)
        return loss, grads, da_prev * inv_m

    def loss_and_grad(self, params, x, y, mask=None):
        """``(loss, grads)`` from the hand-written backward; grads has the structure of params."""
        loss, grads, _ = self.backward(params, x, y, mask)
        return loss, grads

    def manual_loss(self, params, x, y, mask=None):
        """``net.loss`` whose ``jax.grad`` / ``jax.vjp`` runs the hand-written backward."""
        return _manual_loss(self, params, x, y, mask)


# ------------------------------------------------------------- custom_vjp bridge
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _manual_loss(net, params, x, y, mask):
    return net.loss(params, x, y, mask)


def _manual_loss_fwd(net, params, x, y, mask):
    loss, grads, dx = net.backward(params, x, y, mask)
    return loss, (grads, dx)


def _manual_loss_bwd(net, residuals, g):
    grads, dx = residuals
    scale = lambda t: t * g.astype(t.dtype)  # noqa: E731 - chain rule with the output cotangent
    return jax.tree.map(scale, grads), scale(dx), None, None


_manual_loss.defvjp(_manual_loss_fwd, _manual_loss_bwd)


def per_example_grads(net, params, x, y):
    """Per-example gradients: ``vmap`` of the single-example manual backward.

    Every leaf gets a leading batch axis of size m; their mean over that axis is the
    batch gradient ``net.loss_and_grad(params, x, y)[1]``.
    """
    net._check_x(x)

    def one(xi, yi):
        return net.loss_and_grad(params, xi[None], yi[None])[1]

    return jax.vmap(one)(x, y)
