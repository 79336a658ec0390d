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
    """dZ = dA ⊙ 1[z > 0] (the subgradient 0 is taken at z = 0, as ``jax.nn.relu`` does)."""
    return jnp.where(z > 0, da, jnp.zeros_like(da))


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


#: name -> (forward, backward). Hidden layers may use all but softmax.
ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_bwd),
    "tanh": (tanh, tanh_bwd),
    "relu": (relu, relu_bwd),
    "identity": (identity, identity_bwd),
    "softmax": (softmax, softmax_bwd),
}
HIDDEN = ("sigmoid", "tanh", "relu", "identity")
OUTPUTS = ("identity", "sigmoid", "softmax")
