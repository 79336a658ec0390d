"""Activation functions, each forward with its backward directly below it.

Every backward has the signature ``act_bwd(dA, Z, A) -> dZ``: given the gradient of the
cost with respect to the layer's output ``A = g(Z)``, return the gradient with respect to
its input, ``dZ = dA ⊙ g'(Z)`` (the ``⊙ σ'(zˡ)`` factor of BP1 and BP2). Where the seed
derives the derivative from the output (σ' = y(1 − y), tanh' = 1 − y²) the backward uses
``A`` and never recomputes the forward.

Reference: Nielsen, *Neural Networks and Deep Learning*, ch. 2 (BP1–BP4); the seed chapter's
"σ'(u) = y(1 − y)" derivation.
"""

import jax
import jax.numpy as jnp
import numpy as np

#: the negative slope of ``leaky_relu`` (``jax.nn.leaky_relu``'s default)
LEAKY_SLOPE = 0.01
#: the cubic coefficient of the tanh approximation of GELU
GELU_CUBIC = 0.044715


def sigmoid(z):
    """σ(z) = 1 / (1 + e⁻ᶻ), computed without overflow for large |z|."""
    return jax.nn.sigmoid(z)


def sigmoid_bwd(da, z, a):
    """dZ = dA ⊙ σ'(Z) with σ'(z) = y(1 − y), y = σ(z) (the seed's derivation)."""
    return da * a * (1 - a)


def tanh(z):
    """tanh(z)."""
    return jnp.tanh(z)


def tanh_bwd(da, z, a):
    """dZ = dA ⊙ (1 − y²), y = tanh(z)."""
    return da * (1 - a * a)


def relu(z):
    """max(z, 0)."""
    return jax.nn.relu(z)


def relu_bwd(da, z, a):
    """dZ = dA ⊙ 1[z > 0] (the subgradient 0 is taken at z = 0, as ``jax.nn.relu`` does).

    The mask is read from the output, 1[y > 0] = 1[z > 0] for y = max(z, 0) (NaN: false in
    both): XLA then needs no Z in the backward and does not recompute a convolution's
    forward inside the backward's loop to get it (the CNN's step on CPU: 2 % faster,
    `jbp bench`, three alternating runs each).
    """
    return jnp.where(a > 0, da, jnp.zeros_like(da))


def leaky_relu(z):
    """max(z, 0.01·z): ``jax.nn.leaky_relu`` with its default negative slope 0.01."""
    return jax.nn.leaky_relu(z, LEAKY_SLOPE)


def leaky_relu_bwd(da, z, a):
    """dZ = dA ⊙ (1 if z ≥ 0 else 0.01).

    At z = 0 the slope 1 is taken, as ``jax.grad(jax.nn.leaky_relu)(0.0) == 1.0``.
    """
    return jnp.where(z >= 0, da, LEAKY_SLOPE * da)


def gelu(z):
    """GELU, tanh approximation (``jax.nn.gelu(approximate=True)``)::

    g(z) = ½·z·(1 + tanh(u)),   u = √(2/π)·(z + 0.044715·z³)

    Reference: Hendrycks & Gimpel, "Gaussian Error Linear Units (GELUs)", 2016, section 2.
    """
    return jax.nn.gelu(z, approximate=True)


def gelu_bwd(da, z, a):
    """dZ = dA ⊙ g'(z) with t = tanh(u), u = √(2/π)·(z + 0.044715·z³)::

    g'(z) = ½·(1 + t) + ½·z·(1 − t²)·√(2/π)·(1 + 3·0.044715·z²)
    """
    c = np.sqrt(2 / np.pi).astype(jnp.result_type(z))
    t = jnp.tanh(c * (z + GELU_CUBIC * z**3))
    return da * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * c * (1 + 3 * GELU_CUBIC * z * z))


def identity(z):
    """The linear unit: g(z) = z."""
    return z


def identity_bwd(da, z, a):
    """dZ = dA."""
    return da


def softmax(z):
    """softmax(z)ⱼ = e^{zⱼ} / Σₖ e^{zₖ} over the last axis (shifted by max z: no overflow)."""
    return jax.nn.softmax(z, axis=-1)


def softmax_bwd(da, z, a):
    """dZ = A ⊙ (dA − Σⱼ dAⱼ Aⱼ): the softmax Jacobian diag(a) − a aᵀ applied to dA."""
    return a * (da - jnp.sum(da * a, axis=-1, keepdims=True))


def log_softmax(z):
    """log softmax(z)ⱼ = zⱼ − log Σₖ e^{zₖ} over the last axis (log-sum-exp: no overflow)."""
    return jax.nn.log_softmax(z, axis=-1)


def log_softmax_bwd(da, z, a):
    """dZ = dA − softmax(Z)·Σⱼ dAⱼ, with softmax(Z) = e^A (the Jacobian I − 1·softmaxᵀ, row-wise)."""
    return da - jnp.exp(a) * jnp.sum(da, axis=-1, keepdims=True)


#: name -> (forward, backward). Hidden layers may use :data:`HIDDEN`; ``log_softmax`` is
#: for ``jbp.Activation("log_softmax")`` (neither a hidden unit nor a head's output).
ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_bwd),
    "tanh": (tanh, tanh_bwd),
    "relu": (relu, relu_bwd),
    "leaky_relu": (leaky_relu, leaky_relu_bwd),
    "gelu": (gelu, gelu_bwd),
    "identity": (identity, identity_bwd),
    "softmax": (softmax, softmax_bwd),
    "log_softmax": (log_softmax, log_softmax_bwd),
}
HIDDEN = ("sigmoid", "tanh", "relu", "leaky_relu", "gelu", "identity")
OUTPUTS = ("identity", "sigmoid", "softmax")
