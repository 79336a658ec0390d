"""Every built-in layer and combinator passes check_layer (float64: < 1e-10 vs jax.vjp,
< 1e-7 vs finite differences per leaf), over a grid of its hyperparameters."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jbp
from jbp import activations
from jbp.gradient_check import rel_diff
from jbp.layers import Dropout

DENSE = [
    jbp.Dense(3, act, use_bias=bias)
    for act in (None, *activations.ACTIVATIONS)
    for bias in (True, False)
]
ELEMENTWISE = [jbp.Activation(name) for name in activations.ACTIVATIONS]


def _ok(report):
    assert report.ok, report.table()
    assert all(r.rel_vjp < 1e-10 and r.rel_fd < 1e-7 for r in report.rows), report.table()
    return report


@pytest.mark.parametrize("layer", DENSE + ELEMENTWISE, ids=repr)
def test_dense_and_activations(layer):
    _ok(jbp.check_layer(layer, (4,), batch=5))


@pytest.mark.parametrize("in_shape", [(6,), (3, 4, 2)])
def test_flatten(in_shape):
    _ok(jbp.check_layer(jbp.Flatten(), in_shape, batch=3))


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_dropout_with_its_key(rate):
    report = _ok(jbp.check_layer(Dropout(rate), (5,), batch=4, key=jax.random.key(3)))
    assert report.checks["batch_independent"].ok is None  # stochastic: a mask per call


def test_dropout_scales_the_kept_units_and_is_off_in_evaluation():
    x = jnp.ones((1000, 10))
    y, _, _ = Dropout(0.3).forward((), (), x, train=True, key=jax.random.key(0))
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.02
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(Dropout(0.3).forward((), (), x, train=False)[0], x)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
        Dropout(1.0)


COMBINATORS = {
    "sequential": (
        jbp.Sequential(jbp.Dense(5, "tanh"), jbp.Dense(4, "sigmoid"), jbp.Dense(3)),
        (4,),
    ),
    "sequential-images": (
        jbp.Sequential(jbp.Flatten(), jbp.Dense(5, "relu"), jbp.Activation("softmax")),
        (3, 2, 2),
    ),
    "residual-identity": (jbp.Residual(jbp.Sequential(jbp.Dense(4, "tanh"), jbp.Dense(4))), (4,)),
    "residual-projection": (jbp.Residual(jbp.Dense(3, "tanh"), jbp.Dense(3, use_bias=False)), (5,)),
    "fan-out-parallel-sum": (
        jbp.Sequential(
            jbp.FanOut(3),
            jbp.Parallel(jbp.Dense(4, "tanh"), jbp.Dense(4, "sigmoid"), jbp.Identity()),
            jbp.FanInSum(),
        ),
        (4,),
    ),
    "fan-out-parallel-concat": (
        jbp.Sequential(
            jbp.FanOut(2),
            jbp.Parallel(jbp.Dense(2, "relu"), jbp.Dense(3)),
            jbp.FanInConcat(),
            jbp.Dense(2),
        ),
        (4,),
    ),
    "concat-images-axis-0": (
        jbp.Sequential(
            jbp.FanOut(2), jbp.Parallel(jbp.Identity(), jbp.Activation("tanh")), jbp.FanInConcat(0)
        ),
        (2, 3),
    ),
    "parallel-two-inputs": (jbp.Parallel(jbp.Dense(2, "tanh"), jbp.Flatten()), ((3,), (2, 2))),
    "autodiff": (
        jbp.Autodiff(
            lambda p, x: jnp.sin(x @ p["W"]) * p["s"],
            lambda key, in_shape, dtype: {
                "W": jax.random.normal(key, (in_shape[0], 3), dtype),
                "s": jnp.ones((3,), dtype),
            },
        ),
        (4,),
    ),
    "dropout-inside": (jbp.Sequential(jbp.Dense(6, "tanh"), Dropout(0.5), jbp.Dense(2)), (3,)),
}


@pytest.mark.parametrize("name", COMBINATORS)
def test_combinators(name):
    layer, in_shape = COMBINATORS[name]
    _ok(jbp.check_layer(layer, in_shape, batch=3, key=jax.random.key(1)))


def test_flags_and_shapes_of_combinators():
    seq = jbp.Sequential(jbp.Dense(4), Dropout(0.5))
    assert seq.stochastic and not seq.batch_coupled
    assert hash(seq) == hash(jbp.Sequential(jbp.Dense(4), Dropout(0.5)))
    params, state, out = jbp.Sequential(
        jbp.FanOut(2), jbp.Parallel(jbp.Dense(2), jbp.Dense(3))
    ).init(jax.random.key(0), (4,))
    assert out == ((2,), (3,))
    with pytest.raises(ValueError, match="must match to be added"):
        jbp.Residual(jbp.Dense(3)).init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match="not a layer"):
        jbp.Sequential(jbp.Dense(3), "relu")
    with pytest.raises(ValueError, match="one shape"):
        jbp.FanInSum().init(jax.random.key(0), ((3,), (4,)))
    with pytest.raises(ValueError, match="Flatten"):
        jbp.Dense(3).init(jax.random.key(0), (2, 2))


def test_a_function_style_layer():
    """jbp.layer(init, forward, backward): a layer in three plain functions."""

    def init(key, in_shape, dtype):
        return {"a": jnp.full(in_shape, 0.5, dtype)}, (), in_shape

    def forward(params, state, x, *, train, key):
        return params["a"] * x**2, (x,), state

    def backward(params, cache, dy):
        (x,) = cache
        return {"a": jnp.sum(dy * x**2, 0)}, dy * 2 * params["a"] * x

    square = jbp.layer(init, forward, backward, name="square")
    _ok(jbp.check_layer(square, (3,)))
    wrong = jbp.layer(init, forward, lambda p, c, dy: ({"a": jnp.sum(dy, 0)}, dy), name="wrong")
    assert not jbp.check_layer(wrong, (3,)).ok
    with pytest.raises(ValueError, match="callable backward"):
        jbp.layer(init, forward, None)


class LayersWithAndWithoutJit(parameterized.TestCase):
    """The hand-written backward equals jax.vjp of the forward, traced by jit or run eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("dense_relu", jbp.Dense(3, "relu")),
        ("softmax", jbp.Activation("softmax")),
        ("residual", COMBINATORS["residual-projection"][0]),
        ("concat", COMBINATORS["fan-out-parallel-concat"][0]),
    )
    def test_backward_is_the_vjp(self, layer):
        in_shape = (5,)
        params, state, _ = layer.init(jax.random.key(0), in_shape, jnp.float64)
        x = jax.random.normal(jax.random.key(1), (4, *in_shape), jnp.float64)

        @self.variant
        def both(params, x, dy):
            y, cache, _ = layer.forward(params, state, x)
            mine = layer.backward(params, cache, dy)
            ref = jax.vjp(lambda p, x: layer.forward(p, state, x)[0], params, x)[1](dy)
            return mine, ref

        y = layer.apply(params, state, x)
        dy = jax.random.normal(jax.random.key(2), y.shape, jnp.float64)
        mine, ref = both(params, x, dy)
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
            assert rel_diff(a, b) < 1e-12


def test_layers_are_hashable_values():
    assert jbp.Dense(3, "relu") == jbp.Dense(3, "relu")
    assert hash(jbp.Dense(3, "relu")) == hash(jbp.Dense(3, "relu"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        jbp.Dense(3).n_out = 4
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        jbp.Dense(3, "swish")
