"""Costs C, per example summed over output units; a batch's loss is the mean over examples.

Each cost takes the output layer's pre-activation ``Z`` (the logits), its activation
``A = out(Z)`` and dense targets ``T`` (shape ``(m, n_out)``), and returns one value per
example. Each has its backward below it: ``cost_bwd(Z, A, T) -> ∂C/∂A`` (the ∇ₐC of BP1).
The cross-entropies are computed from the logits with log-sum-exp, so a saturated output
never takes log(0); their *fused* output deltas give BP1 directly as

    δᴸ = dZᴸ = Aᴸ − Y        (sigmoid + binary cross-entropy, softmax + cross-entropy)

without forming σ'(z) (which underflows to 0 exactly where the gradient matters).

Reference: Nielsen ch. 3 ("the cross-entropy cost function"); the seed's e = ½Σe².
"""

import jax
import jax.numpy as jnp


def squared_error(z, a, t):
    """C = ½ Σⱼ (tⱼ − vⱼ)², the seed's e = ½Σe² (v = A, the network's output)."""
    return 0.5 * jnp.sum((t - a) ** 2, axis=-1)


def squared_error_bwd(z, a, t):
    """∂C/∂A = (tⱼ − vⱼ)·(−1) = A − T."""
    return a - t


def binary_cross_entropy(z, a, t):
    """C = −Σⱼ [tⱼ ln σ(zⱼ) + (1 − tⱼ) ln(1 − σ(zⱼ))], from logits:

    softplus(z) − z·t with softplus(z) = ln(1 + eᶻ) = logaddexp(0, z), finite for every z
    and smooth at z = 0 (a max(z, 0) + ln(1 + e^{−|z|}) form has a kink there for autodiff).
    """
    return jnp.sum(jnp.logaddexp(0, z) - z * t, axis=-1)


def binary_cross_entropy_bwd(z, a, t):
    """∂C/∂A = (A − T) / (A(1 − A)); only for reference — the fused delta is used instead."""
    return (a - t) / (a * (1 - a))


def binary_cross_entropy_sigmoid_delta(z, a, t):
    """Fused BP1 for a sigmoid output: δᴸ = σ(Z) − T."""
    return a - t


def cross_entropy(z, a, t):
    """C = −Σⱼ tⱼ ln softmax(z)ⱼ = Σⱼ tⱼ (logsumexp(z) − zⱼ), from logits."""
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    return jnp.sum(t * (lse - z), axis=-1)


def cross_entropy_bwd(z, a, t):
    """∂C/∂A = −T / A; only for reference — the fused delta is used instead."""
    return -t / a


def cross_entropy_softmax_delta(z, a, t):
    """Fused BP1 for a softmax output: δᴸ = A·Σⱼtⱼ − T, i.e. A − Y for one-hot targets."""
    return a * jnp.sum(t, axis=-1, keepdims=True) - t


#: name -> (cost, ∂C/∂A, {output: fused δᴸ}, outputs the cost accepts)
COSTS = {
    "squared_error": (squared_error, squared_error_bwd, {}, ("identity", "sigmoid", "softmax")),
    "binary_cross_entropy": (
        binary_cross_entropy,
        binary_cross_entropy_bwd,
        {"sigmoid": binary_cross_entropy_sigmoid_delta},
        ("sigmoid",),
    ),
    "cross_entropy": (
        cross_entropy,
        cross_entropy_bwd,
        {"softmax": cross_entropy_softmax_delta},
        ("softmax",),
    ),
}
