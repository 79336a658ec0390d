"""Embedding: lookups of integer ids, scatter-add backward, float0 dx, ids out of range."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp.embedding import Embedding

IDS = jnp.array([[0, 3, 3, 1], [4, 0, 3, 2], [1, 1, 1, 1]])  # repeats within and across rows


@pytest.mark.parametrize("ids", [IDS, IDS[:, 0]])  # (batch, T) and one id per example
def test_embedding_passes_check_layer_with_repeated_ids(ids):
    report = jbp.check_layer(Embedding(5, 3), ids.shape[1:], x=ids)
    assert report.ok, report.table()
    assert [r.name for r in report.rows] == ["W"]  # integer ids: not differentiated
    assert any("not floating" in n for n in report.notes)


def test_repeated_ids_accumulate_pinned_by_hand():
    emb = Embedding(4, 2)
    params = {"W": jnp.arange(8.0).reshape(4, 2)}
    ids = jnp.array([[2, 0, 2], [2, 3, 0]])
    y, cache, state = emb.forward(params, (), ids)
    np.testing.assert_array_equal(y[0], [[4, 5], [0, 1], [4, 5]])
    assert y.shape == (2, 3, 2) and state == ()
    dy = jnp.array(
        [[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], [[4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]]
    )
    grads, dx = emb.backward(params, cache, dy)
    # row 2 is looked up three times (dy 1, 3, 4), row 0 twice (2, 6), row 3 once, row 1 never
    np.testing.assert_array_equal(grads["W"], [[8, 80], [0, 0], [8, 80], [5, 50]])
    assert dx.shape == ids.shape and dx.dtype == jax.dtypes.float0
    # the same as jax.vjp of the lookup
    ref_p, ref_x = jax.vjp(lambda p, i: emb.forward(p, (), i)[0], params, ids)[1](dy)
    np.testing.assert_array_equal(grads["W"], ref_p["W"])
    assert ref_x.dtype == jax.dtypes.float0


def test_init_shapes_and_scale():
    params, state, out = Embedding(1000, 16).init(jax.random.key(0), (7,), jnp.float64)
    assert params["W"].shape == (1000, 16) and params["W"].dtype == jnp.float64
    assert state == () and out == (7, 16)
    assert abs(float(jnp.std(params["W"])) - 1 / 4) < 0.01  # N(0, 1/features)
    assert Embedding(10, 4).init(jax.random.key(0), (), jnp.float32)[2] == (4,)


@pytest.mark.parametrize("bad", [5, -1])
def test_ids_out_of_range_raise_when_concrete(bad):
    emb = Embedding(5, 3)
    params, _, _ = emb.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match=r"ids must be in \[0, 4\]"):
        emb.forward(params, (), jnp.array([[0, bad]]))


def test_ids_out_of_range_inside_jit_give_zeros_and_no_gradient():
    emb = Embedding(5, 3)
    params, _, _ = emb.init(jax.random.key(0), (3,), jnp.float64)
    ids = jnp.array([[1, 5, -1]])
    y, cache, _ = jax.jit(lambda p, i: emb.forward(p, (), i))(params, ids)
    np.testing.assert_array_equal(y[0, 0], params["W"][1])
    np.testing.assert_array_equal(y[0, 1:], 0.0)
    grads, _ = jax.jit(emb.backward)(params, cache, jnp.ones((1, 3, 3)))
    np.testing.assert_array_equal(grads["W"], np.eye(5)[1][:, None] * np.ones(3))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="n_embed must be a positive integer"):
        Embedding(0, 3)
    with pytest.raises(ValueError, match="features must be a positive integer"):
        Embedding(3, 2.5)
    emb = Embedding(5, 3)
    params, _, _ = emb.init(jax.random.key(0), (2,))
    with pytest.raises(ValueError, match="integer token ids"):
        emb.forward(params, (), jnp.zeros((1, 2)))


def test_a_network_on_token_ids_uses_the_hand_written_backward():
    """jax.grad of net.manual_loss (the float0 dx crosses the custom_vjp) = jax.grad(loss)."""
    net = jbp.Network(jbp.Sequential(Embedding(5, 3), jbp.Flatten(), jbp.Dense(2)), in_shape=(4,))
    params = net.init(jax.random.key(0), jnp.float64)
    y = jnp.array([0, 1, 1])
    manual = jax.grad(net.manual_loss)(params, IDS, y)
    ref = jax.grad(net.loss)(params, IDS, y)
    for a, b in zip(jax.tree.leaves(manual), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
