"""The epoch program on any model: traced once, model state carried, stochastic layers resumable."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import epoch as engine
from jbp.data import Dataset
from jbp.gradient_check import rel_diff
from jbp.layers import Dropout


@pytest.fixture(scope="module")
def small():
    ds = jbp.data.load("digits")
    return Dataset(ds.x_train[:203], ds.y_train[:203], ds.x_test[:100], ds.y_test[:100])


def _images(ds):
    """The digits as (n, 8, 8, 1) images: inputs of any shape train."""
    return Dataset(
        ds.x_train.reshape(-1, 8, 8, 1), ds.y_train, ds.x_test.reshape(-1, 8, 8, 1), ds.y_test
    )


DROPNET = jbp.Network(
    jbp.Sequential(jbp.Flatten(), jbp.Dense(32, "relu"), Dropout(0.25), jbp.Dense(10)),
    "softmax_cross_entropy",
    in_shape=(8, 8, 1),
)


@pytest.mark.parametrize("batch_size", [None, 1, 37, 29])  # full, SGD, ragged last, ragged
def test_the_epoch_program_is_traced_once(small, batch_size):
    """Every epoch, the ragged last batch included, reuses one trace of the program."""
    data = Dataset(small[0][:60], small[1][:60], small[2], small[3])
    net = jbp.MLP((64, 8, 10), "tanh")
    opt = jbp.optim.adam(1e-2)
    chex.clear_trace_counter()
    epoch = jax.jit(chex.assert_max_traces(engine.make_epoch(net, opt, batch_size), n=1))
    state, _ = jbp.fit(net, opt, data, batch_size=batch_size, epochs=3, key=jax.random.key(0),
                       epoch_fn=epoch)  # fmt: skip
    jbp.fit(net, opt, data, batch_size=batch_size, epochs=5, state=state, epoch_fn=epoch)


def test_a_network_on_image_shaped_inputs_trains(small):
    data = _images(small)
    net = jbp.Network(
        jbp.Sequential(jbp.Flatten(), jbp.Dense(32, "relu"), jbp.Dense(10)),
        "softmax_cross_entropy",
        in_shape=(8, 8, 1),
    )
    _, hist = jbp.fit(net, jbp.optim.adam(1e-2), data, batch_size=32, epochs=4,
                      key=jax.random.key(0))  # fmt: skip
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_accuracy"] > 0.5
    with pytest.raises(
        ValueError, match=r"train inputs have shape \(203, 64\).*\(batch, 8, 8, 1\)"
    ):
        jbp.fit(net, jbp.optim.adam(1e-2), small, epochs=1, key=jax.random.key(0))


def test_a_stochastic_model_resumes_bit_exactly(small):
    data = _images(small)
    kw = dict(batch_size=37, key=jax.random.key(0))
    opt = jbp.optim.adam(1e-2)
    full, _ = jbp.fit(DROPNET, opt, data, epochs=4, **kw)
    half, _ = jbp.fit(DROPNET, opt, data, epochs=2, **kw)
    resumed, _ = jbp.fit(DROPNET, opt, data, epochs=4, state=half, batch_size=37)
    assert jbp.params_sha256(resumed) == jbp.params_sha256(full)
    # the masks really are drawn: another seed, other parameters; and dropout is off in eval
    other, _ = jbp.fit(DROPNET, opt, data, epochs=1, batch_size=37, key=jax.random.key(1))
    assert jbp.params_sha256(other.params) != jbp.params_sha256(half.params)
    x = jnp.asarray(data.x_test[:5])
    np.testing.assert_array_equal(DROPNET.apply(full.params, x), DROPNET.apply(full.params, x))


def test_every_step_of_a_stochastic_model_draws_new_masks(small):
    """Keys are fold_in(epoch key, step): two steps never share a dropout mask."""
    seen = []

    class Spy(Dropout):
        def forward(self, params, state, x, *, train=False, key=None):
            if train:
                k = jax.random.key_data(key)
                jax.debug.callback(lambda k: seen.append(np.asarray(k).tobytes()), k)
            return super().forward(params, state, x, train=train, key=key)

    net = jbp.Network(jbp.Sequential(jbp.Dense(8, "relu"), Spy(0.5), jbp.Dense(10)),
                      in_shape=(64,))  # fmt: skip
    jbp.fit(net, jbp.optim.sgd(0.1), small, batch_size=64, epochs=2, key=jax.random.key(0))
    assert len(seen) == 8 and len(set(seen)) == 8


class Counter(jbp.Layer):
    """A stateful layer for the engine: counts the real examples it has seen in training."""

    batch_coupled = True

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), jnp.zeros((), dtype), in_shape

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        seen = x.shape[0] if mask is None else jnp.sum(mask)
        return x, (), state + seen if train else state

    def backward(self, params, cache, dy):
        return (), dy


def test_the_model_state_is_carried_and_masks_reach_coupled_layers(small):
    net = jbp.Network(jbp.Sequential(jbp.Dense(10), Counter()), in_shape=(64,))
    assert net.batch_coupled
    state, _ = jbp.fit(net, jbp.optim.sgd(0.1), small, batch_size=37, epochs=2,
                       key=jax.random.key(0))  # fmt: skip
    assert float(state.model_state[1]) == 2 * 203  # padded rows of the ragged batch not counted
    with pytest.raises(ValueError, match="per-example gradients"):
        jbp.per_example_grads(net, state.params, small[0][:3], small[1][:3])


@pytest.mark.parametrize("parallel", ["shard_map", "pmap"])
def test_a_network_trains_over_devices(small, parallel):
    data = _images(small)
    kw = dict(batch_size=40, epochs=2, key=jax.random.key(0), dtype=jnp.float64)
    net = jbp.Network(jbp.Sequential(jbp.Flatten(), jbp.Dense(16, "tanh"), jbp.Dense(10)),
                      in_shape=(8, 8, 1))  # fmt: skip
    one, _ = jbp.fit(net, jbp.optim.sgd(0.1), data, **kw)
    two, _ = jbp.fit(net, jbp.optim.sgd(0.1), data, devices=2, parallel=parallel, **kw)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_bridge_runs_the_hand_written_backward():
    """jax.grad of net.manual_loss is the hand-written backward, x included."""
    net = jbp.Network(jbp.Sequential(jbp.Dense(5, "tanh"), jbp.Dense(3)), in_shape=(4,))
    params = net.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (6, 4), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    loss, grads, dx = net.backward(params, x, y)
    g_params, g_x = jax.grad(net.manual_loss, argnums=(0, 1))(params, x, y)
    for a, b in zip(jax.tree.leaves((grads, dx)), jax.tree.leaves((g_params, g_x)), strict=True):
        np.testing.assert_array_equal(a, b)
    ref = jax.grad(net.loss, argnums=(0, 1))(params, x, y)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves((g_params, g_x)), strict=True):
        assert rel_diff(a, b) < 1e-12


def test_the_divergence_probe_does_not_reread_the_activations():
    """The per-step probe sums the small gradient leaves (the biases); summing db = Σ dZ must
    not become XLA's sum over the whole dZ (a second pass over every activation)."""
    import re

    net = jbp.models.cnn((8, 8, 1), 10, dropout=0.0, width=(4, 8, 16))
    opt = jbp.optim.adam(1e-3)
    state = jbp.train.init_state(net, opt, jax.random.key(0), jnp.float32)
    x, y = jnp.zeros((32, 8, 8, 1)), jnp.zeros((32,), jnp.int32)
    epoch = jax.jit(engine.make_epoch(net, opt, 16))
    hlo = epoch.lower(state, x, y, x[:16], y[:16]).compile().as_text()
    scalar_reductions = re.findall(r"^%\S+ \(([^)]*)\) -> f32\[\] \{", hlo, re.M)
    assert scalar_reductions  # the probe (and the loss) are there
    for activation in ("f32[16,8,8,4]", "f32[16,4,4,8]"):  # dZ of the two convolutions
        assert not any(activation in params for params in scalar_reductions), activation
