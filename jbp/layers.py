"""The dense layer: Z = A_prev·W + b, and its backward (BP2–BP4), side by side.

Rows are examples (``A_prev``: (m, n_in), ``W``: (n_in, n_out), ``b``: (n_out,)), so the
seed's column-vector formulas appear transposed: with ``dZ`` holding one δ per row,

    dW = 1/m · A_prevᵀ·dZ      (BP4: ∂C/∂w = a_in·δ_out, averaged over the batch)
    db = 1/m · Σᵢ dZᵢ          (BP3: ∂C/∂b = δ)
    dA_prev = dZ·Wᵀ            (the (Wˡ⁺¹)ᵀδˡ⁺¹ factor of BP2, before ⊙ σ'(zˡ))
"""

import jax.numpy as jnp


def dense_fwd(params, a_prev):
    """Z = A_prev·W + b."""
    return a_prev @ params["W"] + params["b"]


def dense_bwd(params, dz, a_prev, inv_m):
    """Return ``({"W": dW, "b": db}, dA_prev)`` for one dense layer.

    Args:
      params: the layer's ``{"W", "b"}``.
      dz: (m, n_out) per-example deltas δ = ∂Cᵢ/∂Z (rows of padding are zero).
      a_prev: (m, n_in) the layer's input.
      inv_m: 1/m, where m counts the examples that contribute.
    """
    grads = {"W": (a_prev.T @ dz) * inv_m, "b": jnp.sum(dz, axis=0) * inv_m}
    return grads, dz @ params["W"].T
