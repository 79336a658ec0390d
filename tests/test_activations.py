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


def test_the_new_activations_are_registered_and_checked_above():
    for name in ("leaky_relu", "gelu", "log_softmax"):
        assert name in activations.ACTIVATIONS  # so test_backward_is_vjp_of_forward runs them
    assert "leaky_relu" in activations.HIDDEN and "gelu" in activations.HIDDEN
    assert "log_softmax" not in activations.HIDDEN + activations.OUTPUTS


@pytest.mark.parametrize(
    "name, ref",
    [
        ("leaky_relu", jax.nn.leaky_relu),
        ("gelu", lambda z: jax.nn.gelu(z, approximate=True)),
        ("log_softmax", lambda z: jax.nn.log_softmax(z, axis=-1)),
    ],
)
def test_new_activations_equal_jax_nn(name, ref):
    fwd, bwd = activations.ACTIVATIONS[name]
    np.testing.assert_allclose(fwd(Z), ref(Z), rtol=1e-15, atol=1e-15)
    a = fwd(Z)
    np.testing.assert_allclose(bwd(DA, Z, a), jax.vjp(ref, Z)[1](DA)[0], rtol=1e-12, atol=1e-14)


def test_leaky_relu_slopes_follow_jax_at_zero():
    # jax.nn.leaky_relu is where(z >= 0, z, 0.01·z): slope 1 at exactly 0
    z = jnp.array([-2.0, 0.0, 3.0])
    assert float(jax.grad(jax.nn.leaky_relu)(0.0)) == 1.0
    got = activations.leaky_relu_bwd(jnp.ones(3), z, activations.leaky_relu(z))
    np.testing.assert_array_equal(got, [0.01, 1.0, 1.0])


def test_gelu_derivative_pinned():
    # g'(0) = ½; g'(z) → 1 for large z and → 0 for very negative z
    z = jnp.array([0.0, 10.0, -10.0])
    got = activations.gelu_bwd(jnp.ones(3), z, activations.gelu(z))
    np.testing.assert_allclose(got, [0.5, 1.0, 0.0], atol=1e-12)


def test_log_softmax_is_stable_and_an_activation_layer():
    import jbp

    z = jnp.array([[-1000.0, 0.0, 1000.0]])
    a = activations.log_softmax(z)
    assert jnp.all(jnp.isfinite(a))
    np.testing.assert_allclose(a[0, 2], 0.0, atol=1e-12)
    # every row of dZ sums to 0: Σⱼ dZⱼ = Σ dA − (Σⱼ softmaxⱼ)·Σ dA
    dz = activations.log_softmax_bwd(DA, Z, activations.log_softmax(Z))
    np.testing.assert_allclose(dz.sum(-1), 0.0, atol=1e-12)
    report = jbp.check_layer(jbp.Activation("log_softmax"), (6,), batch=3)
    assert report.ok, report.table()
