"""Costs: values by hand, ∂C/∂A against autodiff, fused deltas, stability at saturation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbp import activations, losses

Z = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64) * 2
T_ONEHOT = jax.nn.one_hot(jnp.array([0, 1, 2, 3, 0, 1]), 4, dtype=jnp.float64)
T_BIN = jax.random.bernoulli(jax.random.key(1), 0.5, (6, 4)).astype(jnp.float64)


def test_squared_error_is_half_sum_of_squares():
    a = jnp.array([[1.0, 2.0]])
    t = jnp.array([[0.0, 4.0]])
    assert float(losses.squared_error(None, a, t)[0]) == 0.5 * (1 + 4)


def test_squared_error_bwd_is_gradient_wrt_output():
    a = activations.sigmoid(Z)
    g = jax.grad(lambda a: losses.squared_error(None, a, T_BIN).sum())(a)
    np.testing.assert_allclose(losses.squared_error_bwd(None, a, T_BIN), g, rtol=1e-12)


@pytest.mark.parametrize(
    "cost,out,t",
    [("binary_cross_entropy", "sigmoid", T_BIN), ("cross_entropy", "softmax", T_ONEHOT)],
)
def test_cross_entropy_bwd_through_the_output_is_the_logit_gradient(cost, out, t):
    """The cross-entropies are written from logits: check ∂C/∂A ⊙ g'(Z) against ∂C/∂Z."""
    c, c_bwd, _, _ = losses.COSTS[cost]
    fwd, bwd = activations.ACTIVATIONS[out]
    a = fwd(Z)
    g_z = jax.grad(lambda z: c(z, fwd(z), t).sum())(Z)
    np.testing.assert_allclose(bwd(c_bwd(Z, a, t), Z, a), g_z, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "cost,out,t",
    [("binary_cross_entropy", "sigmoid", T_BIN), ("cross_entropy", "softmax", T_ONEHOT)],
)
def test_fused_delta_is_a_minus_y(cost, out, t):
    c, _, fused, _ = losses.COSTS[cost]
    a = activations.ACTIVATIONS[out][0](Z)
    dz = fused[out](Z, a, t)
    np.testing.assert_allclose(dz, a - t, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        dz, jax.grad(lambda z: c(z, None, t).sum())(Z), rtol=1e-10, atol=1e-14
    )


def test_cross_entropies_do_not_take_log_of_zero():
    z = jnp.array([[-800.0, 800.0]])
    bce = losses.binary_cross_entropy(z, None, jnp.array([[1.0, 0.0]]))
    ce = losses.cross_entropy(z, None, jnp.array([[1.0, 0.0]]))
    np.testing.assert_allclose(bce, [1600.0])
    np.testing.assert_allclose(ce, [1600.0])
    g = jax.grad(lambda z: losses.binary_cross_entropy(z, None, jnp.array([[1.0, 0.0]])).sum())(z)
    assert jnp.all(jnp.isfinite(g))


def test_cross_entropy_by_hand():
    z = jnp.log(jnp.array([[1.0, 2.0, 1.0]]))  # softmax = (¼, ½, ¼)
    t = jnp.array([[0.0, 1.0, 0.0]])
    np.testing.assert_allclose(losses.cross_entropy(z, None, t), [np.log(2.0)], rtol=1e-14)
