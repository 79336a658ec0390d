"""The exponentially weighted moving average, the building block of momentum, RMSprop, Adam."""

import jax
import jax.numpy as jnp
from jax import lax

from jbp.util import real


def ewma(series: jax.typing.ArrayLike, beta, bias_correction: bool = False) -> jax.Array:
    """Exponentially weighted moving average of a series, with optional bias correction.

    ``v₀ = 0``,  ``vₜ = β·vₜ₋₁ + (1 − β)·θₜ``  for t = 1 … T, or, with
    ``bias_correction=True``, ``vₜ / (1 − βᵗ)``.

    ``vₜ`` averages roughly the last 1/(1 − β) values (a value's weight falls by 1/e
    after that many steps: βᵗ ≈ e⁻¹ at t = 1/(1 − β)). Starting from ``v₀ = 0`` biases
    the early values towards 0; dividing by 1 − βᵗ, the total weight given so far,
    removes that bias (the first corrected value is exactly θ₁).

    Args:
        series: the values θ₁ … θ_T along the leading axis (shape ``(T, ...)``; any
            trailing axes are averaged independently). Integers are promoted to float.
        beta: decay β in [0, 1) (checked unless traced).
        bias_correction: divide ``vₜ`` by ``1 − βᵗ``.

    Returns:
        ``(v₁, …, v_T)``, with the shape of ``series``. Uses ``lax.scan``, so it can be
        jitted (``beta`` and ``bias_correction`` may be static or, for ``beta``, traced).

    Example:
        >>> [float(x) for x in ewma(jnp.array([1.0, 2.0, 3.0]), 0.5)]
        [0.5, 1.25, 2.125]

    Reference: A. Ng, *Improving Deep Neural Networks* (deeplearning.ai), week 2,
    "Exponentially weighted averages" and "Bias correction".
    """
    if not isinstance(beta, jax.core.Tracer):
        real("beta", beta, low=0, high=1, high_open=True)
    x = jnp.asarray(series)
    if x.ndim == 0:
        raise ValueError(f"series must have a leading time axis, got a scalar (shape {x.shape})")
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))

    def step(v, theta):
        v = (beta * v + (1 - beta) * theta).astype(v.dtype)
        return v, v

    _, v = lax.scan(step, jnp.zeros_like(x[0]), x)
    if bias_correction:
        t = jnp.arange(1, x.shape[0] + 1).reshape((-1,) + (1,) * (x.ndim - 1))
        v = v / (1 - beta**t).astype(v.dtype)
    return v
