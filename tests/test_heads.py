"""Loss heads own BP1, the mask and 1/m: their delta is ∂C/∂Z of their own loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import heads
from jbp.gradient_check import rel_diff

HEADS = [
    heads.SoftmaxCrossEntropy(),
    heads.SigmoidBinaryCrossEntropy(),
    heads.SquaredError("identity"),
    heads.SquaredError("sigmoid"),
    heads.SquaredError("softmax"),
]


def _targets(head, key, m, n):
    if head.output == "softmax":
        return jax.random.randint(key, (m,), 0, n)
    if head.output == "sigmoid":
        return jax.random.bernoulli(key, 0.5, (m, n)).astype(jnp.float64)
    return jax.random.normal(key, (m, n), jnp.float64)


@pytest.mark.parametrize("head", HEADS, ids=repr)
@pytest.mark.parametrize("masked", [False, True])
def test_the_delta_is_the_gradient_of_the_loss(head, masked):
    z = 3 * jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
    y = _targets(head, jax.random.key(1), 6, 4)
    mask = jnp.array([1, 1, 0, 1, 0, 1.0]) if masked else None
    loss, dz = head.loss_and_delta(z, y, mask)
    ref_loss, ref = jax.value_and_grad(head.loss)(z, y, mask)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-14)
    assert rel_diff(dz, ref) < 1e-14
    if masked:  # padded rows get no gradient at all
        np.testing.assert_array_equal(dz[jnp.array([2, 4])], 0)


def test_the_fused_deltas_are_a_minus_y():
    z = jax.random.normal(jax.random.key(0), (5, 3), jnp.float64)
    y = jnp.array([0, 2, 1, 1, 0])
    _, dz = heads.SoftmaxCrossEntropy().loss_and_delta(z, y)
    np.testing.assert_allclose(dz * 5, jax.nn.softmax(z) - jax.nn.one_hot(y, 3), rtol=1e-14)
    t = jnp.array([[0.0, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    _, dz = heads.SigmoidBinaryCrossEntropy().loss_and_delta(z, t)
    np.testing.assert_allclose(dz * 5, jax.nn.sigmoid(z) - t, rtol=1e-14)


def test_labels_targets_and_accuracy():
    head = heads.SoftmaxCrossEntropy()
    z = jnp.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(head.accuracy(z, jnp.array([0, 1, 0]))) == pytest.approx(2 / 3)
    assert float(head.accuracy(z, jnp.array([0, 1, 0]), jnp.array([1, 1, 0.0]))) == 1.0
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        head.loss(z, jnp.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(3,\)"):
        head.loss(z, jnp.zeros((3, 2)))
    binary = heads.SigmoidBinaryCrossEntropy()
    assert float(binary.accuracy(jnp.array([[2.0], [-1.0]]), jnp.array([1, 1]))) == 0.5


def test_heads_by_name_and_bad_pairs():
    assert heads.get("softmax_cross_entropy") == heads.SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="unknown loss head 'hinge'"):
        heads.get("hinge")
    with pytest.raises(ValueError, match="does not fit output 'identity'"):
        heads.Head("identity", "cross_entropy")
    with pytest.raises(ValueError, match="at least 2 units"):
        jbp.Network(jbp.Dense(1), "softmax_cross_entropy", in_shape=(3,))
