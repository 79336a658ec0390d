"""The seed's per-case derivation (M → I → J) equals the vectorised backward on every case."""

import jax
import jax.numpy as jnp
import numpy as np

import jbp
from jbp import derivation


def _case(m=6):
    net = jbp.MLP((3, 4, 2), "sigmoid", "identity", "squared_error")
    params = net.init(jax.random.key(0), jnp.float64)
    params[0]["b"] = jnp.array([0.1, -0.2, 0.3, 0.0])
    params[1]["b"] = jnp.array([0.05, -0.05])
    x = np.asarray(jax.random.normal(jax.random.key(1), (m, 3), jnp.float64))
    t = np.asarray(jax.random.normal(jax.random.key(2), (m, 2), jnp.float64))
    return net, params, x, t


def test_every_case_equals_a_batch_of_one():
    net, params, x, t = _case()
    for k in range(x.shape[0]):
        e, _, _, grads = derivation.case_deltas(params, x[k], t[k])
        loss, g = net.loss_and_grad(params, x[k : k + 1], t[k : k + 1])
        np.testing.assert_allclose(e, loss, rtol=1e-13)
        for gl, vl in zip(grads, g, strict=True):
            for name in ("W", "b"):
                np.testing.assert_allclose(gl[name], vl[name], rtol=1e-12, atol=1e-15)


def test_batch_mean_equals_vectorised_backward():
    net, params, x, t = _case()
    loss, grads = derivation.batch_grads(params, x, t)
    ref_loss, ref = net.loss_and_grad(params, x, t)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    for gl, vl in zip(grads, ref, strict=True):
        for name in ("W", "b"):
            np.testing.assert_allclose(gl[name], vl[name], rtol=1e-12, atol=1e-15)


def test_output_delta_is_minus_error():
    net, params, x, t = _case(1)
    v = np.asarray(net.apply(params, x))[0]
    _, _, delta_j, _ = derivation.case_deltas(params, x[0], t[0])
    np.testing.assert_allclose(delta_j, (t[0] - v) * -1.0, rtol=1e-13)
