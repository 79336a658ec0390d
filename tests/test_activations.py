"""Each activation's backward against jax.vjp of its forward (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbp import activations

Z = jax.random.normal(jax.random.key(0), (5, 7), jnp.float64) * 3
DA = jax.random.normal(jax.random.key(1), (5, 7), jnp.float64)


@pytest.mark.parametrize("name", sorted(activations.ACTIVATIONS))
def test_backward_is_vjp_of_forward(name):
    fwd, bwd = activations.ACTIVATIONS[name]
    a, vjp = jax.vjp(fwd, Z)
    np.testing.assert_allclose(bwd(DA, Z, a), vjp(DA)[0], rtol=1e-12, atol=1e-14)


def test_sigmoid_derivative_from_output():
    # σ'(z) = y(1 − y): at z = 0, y = ½ and σ' = ¼
    a = activations.sigmoid(jnp.zeros(1))
    assert float(activations.sigmoid_bwd(jnp.ones(1), None, a)[0]) == 0.25


def test_tanh_derivative_from_output():
    a = activations.tanh(jnp.array([0.5]))
    np.testing.assert_allclose(
        activations.tanh_bwd(jnp.ones(1), None, a), 1 - np.tanh(0.5) ** 2, rtol=1e-15
    )


def test_relu_subgradient_at_zero_is_zero():
    assert float(activations.relu_bwd(jnp.ones(1), jnp.zeros(1), jnp.zeros(1))[0]) == 0.0


def test_saturated_sigmoid_and_softmax_are_finite():
    z = jnp.array([[-1000.0, 0.0, 1000.0]])
    assert jnp.all(jnp.isfinite(activations.sigmoid(z)))
    assert jnp.all(jnp.isfinite(activations.softmax(z)))
    np.testing.assert_allclose(activations.softmax(z).sum(), 1.0)
