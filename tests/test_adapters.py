"""Adapters: a plain JAX function and Flax NNX modules trained by ``jbp.fit``.

Covers training, gradients against ``jax.grad``, per-example gradients, checkpoints and
bit-exact resume, BatchNorm state (and its mask), dropout reseeded from the engine's key,
and ``devices=`` (the conftest gives 4 simulated CPU devices).
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jbp
from jbp import adapters
from jbp.model import per_example_grads


@pytest.fixture(scope="module")
def data():
    ds = jbp.data.load("digits")
    return jbp.data.Dataset(ds.x_train[:300], ds.y_train[:300], ds.x_test[:100], ds.y_test[:100])


def _batch(data, n=20, dtype=jnp.float64):
    return jnp.asarray(data.x_train[:n], dtype), jnp.asarray(data.y_train[:n])


def _close(a, b, rtol=1e-10, atol=1e-12):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _sha(state):
    return jbp.params_sha256(state)


# ------------------------------------------------------------------ plain function
def mlp_apply(params, x):
    return jnp.tanh(x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]


def mlp_init(key):
    k1, k2 = jax.random.split(key)
    return {
        "W1": jax.random.normal(k1, (64, 32)) / 8.0,
        "b1": jnp.zeros(32),
        "W2": jax.random.normal(k2, (32, 10)) / np.sqrt(32.0),
        "b2": jnp.zeros(10),
    }


FN = adapters.from_function(mlp_apply, mlp_init, in_shape=(64,))


def test_function_model_trains(data):
    state, hist = jbp.fit(
        FN, jbp.optim.adam(1e-2), data, batch_size=50, epochs=4, key=jax.random.key(0)
    )
    losses = [r["train_loss"] for r in hist]
    assert losses[-1] < 0.7 * losses[0]
    assert hist[-1]["test_accuracy"] > 0.5  # chance: 0.1
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float32  # cast by InitFn


def test_function_model_gradient_is_jax_grad(data):
    params, state = FN.initialize(jax.random.key(1), jnp.float64)
    assert jax.tree.leaves(params)[0].dtype == jnp.float64
    x, y = _batch(data)
    mask = jnp.asarray(np.arange(20) < 15, jnp.float64)
    loss, grads = jax.jit(FN.loss_and_grad)(params, x, y, mask)
    ref = jax.jit(jax.grad(FN.loss))(params, x, y, mask)
    _close(grads, ref)
    assert loss == pytest.approx(float(FN.loss(params, x, y, mask)), rel=1e-12)
    for backward in FN.backwards:
        step = jax.jit(functools.partial(FN.train_grad, backward=backward))
        l2, g2, _ = step(params, state, x, y, mask)
        _close(g2, ref)
        assert float(l2) == pytest.approx(float(loss), rel=1e-12)
    assert FN.backwards == ("manual", "autodiff")


def test_function_model_per_example_grads(data):
    params = FN.init(jax.random.key(2), jnp.float64)
    x, y = _batch(data, 8)
    pe = jax.jit(functools.partial(per_example_grads, FN))(params, x, y)
    assert jax.tree.leaves(pe)[0].shape[0] == 8
    _close(jax.tree.map(lambda g: g.mean(0), pe), jax.jit(FN.loss_and_grad)(params, x, y)[1])


def test_function_model_is_comparable_and_described():
    again = adapters.from_function(mlp_apply, mlp_init, in_shape=(64,))
    assert again == FN and hash(again) == hash(FN)
    config = json.loads(json.dumps(FN.config()))
    assert config["model"] == "FunctionModel"
    assert config["layer"]["fn"] == f"{__name__}.mlp_apply"
    assert config["layer"]["init_fn"] == {"type": "InitFn", "init": f"{__name__}.mlp_init"}
    with pytest.raises(ValueError, match="logits of shape"):  # (batch,) is no (batch, n_out)
        adapters.from_function(lambda p, x: x.sum(-1), lambda k: (), in_shape=(64,))
    with pytest.raises(ValueError, match="inputs have shape"):
        FN.check_data(np.zeros((3, 63)), np.zeros(3, np.int32), "train")


# ------------------------------------------------------------------------ Flax NNX
class Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.l1(x)))


class BNNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.bn = nnx.BatchNorm(32, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


class MaskedBNNet(BNNet):
    def __call__(self, x, mask):  # hands the engine's mask on to BatchNorm
        return self.l2(nnx.relu(self.bn(self.l1(x), mask=mask[:, None])))


class DropNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 32, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.l2 = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(nnx.relu(self.l1(x))))


NNX = adapters.from_nnx(lambda rngs: Net(rngs), in_shape=(64,))


def _fit(model, data, epochs, **kw):
    kw.setdefault("key", None if "state" in kw else jax.random.key(0))
    return jbp.fit(model, jbp.optim.adam(1e-2), data, batch_size=64, epochs=epochs, **kw)


@pytest.fixture(scope="module")
def nnx_run(data):
    return _fit(NNX, data, 4)  # 300 / 64: a ragged, masked last batch


def test_nnx_trains(nnx_run):
    state, hist = nnx_run
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["test_accuracy"] > 0.5
    assert set(state.params) == {"l1", "l2"} and set(state.params["l1"]) == {"kernel", "bias"}
    assert state.model_state == {}
    assert not NNX.batch_coupled and not NNX.stochastic
    config = json.loads(json.dumps(NNX.config()))
    assert config["module"] == f"{__name__}.Net" and config["params"]["l1/kernel"] == [64, 32]
    assert "Net" in repr(NNX) and NNX.n_out == 10
    assert hash(NNX) == hash(NNX) and NNX == NNX  # a jit static argument: by identity


def test_nnx_checkpoint_round_trip(nnx_run, tmp_path):
    state = nnx_run[0]
    path = jbp.checkpoint.save(tmp_path / "ckpt", state, config=NNX.config())
    back = jbp.checkpoint.restore(path, like=state, config=NNX.config())
    assert _sha(back) == _sha(state)
    assert jax.tree.structure(back) == jax.tree.structure(state)


def test_nnx_resume_is_bit_exact(nnx_run, data):
    half, _ = _fit(NNX, data, 2)
    resumed, hist = _fit(NNX, data, 4, state=half)
    assert [r["epoch"] for r in hist] == [3, 4]
    assert _sha(resumed.params) == _sha(nnx_run[0].params)
    assert _sha(resumed) == _sha(nnx_run[0])


def test_nnx_gradient_is_jax_grad(data):
    params, state = NNX.initialize(jax.random.key(3), jnp.float64)
    x, y = _batch(data)
    mask = jnp.asarray(np.arange(20) < 13, jnp.float64)
    ref = jax.jit(jax.grad(NNX.loss))(params, x, y, mask)
    for backward in ("manual", "autodiff"):
        step = jax.jit(functools.partial(NNX.train_grad, backward=backward))
        loss, grads, new_state = step(params, state, x, y, mask)
        _close(grads, ref)
        assert float(loss) == pytest.approx(float(NNX.loss(params, x, y, mask)), rel=1e-12)
        assert new_state == {}
    pe = jax.jit(functools.partial(per_example_grads, NNX))(params, x[:6], y[:6])
    _close(jax.tree.map(lambda g: g.mean(0), pe), NNX.loss_and_grad(params, x[:6], y[:6])[1])
    with pytest.raises(ValueError, match="backward must be one of"):
        NNX.train_grad(params, state, x, y, backward="finite")


def test_nnx_key_and_instance(data):
    p0, _ = NNX.initialize(jax.random.key(0))
    p1, _ = NNX.initialize(jax.random.key(1))
    assert _sha(p0) != _sha(p1)  # the factory draws from the key
    module = Net(nnx.Rngs(7))
    kernel = np.asarray(module.l1.kernel.get_value())
    model = adapters.from_nnx(module, in_shape=64)
    q0, _ = model.initialize(jax.random.key(0))
    q1, _ = model.initialize(jax.random.key(1))
    assert _sha(q0) == _sha(q1)  # an instance: its own parameters, whatever the key
    np.testing.assert_array_equal(q0["l1"]["kernel"], kernel)
    state, _ = _fit(model, data, 1)
    np.testing.assert_array_equal(module.l1.kernel.get_value(), kernel)  # left untouched
    assert _sha(state.params) != _sha(q0)
    with pytest.raises(ValueError, match="l2/kernel has shape"):
        model.check_params({**q0, "l2": {"kernel": q0["l1"]["kernel"], "bias": q0["l2"]["bias"]}})


def test_nnx_without_in_shape_checks_targets(data):
    model = adapters.from_nnx(lambda rngs: Net(rngs))
    model.check_data(data.x_train, data.y_train, "train")
    with pytest.raises(ValueError, match="labels must be in"):
        model.check_data(data.x_train[:4], np.array([0, 1, 2, 10]), "train")
    with pytest.raises(ValueError, match="cannot take inputs of shape"):
        model.check_data(np.zeros((4, 63)), np.zeros(4, np.int32), "train")
    with pytest.raises(ValueError, match="nnx.Module"):
        adapters.from_nnx(3)


def test_nnx_batchnorm_state(data):
    model = adapters.from_nnx(lambda rngs: BNNet(rngs), in_shape=(64,))
    assert model.batch_coupled and not model.stochastic
    params, s0 = model.initialize(jax.random.key(0))
    assert set(s0["bn"]) == {"mean", "var"}
    state, hist = jbp.fit(
        model, jbp.optim.adam(1e-2), data, batch_size=50, epochs=3, key=jax.random.key(0)
    )
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_accuracy"] > 0.5
    ms = state.model_state
    assert not np.allclose(ms["bn"]["mean"], s0["bn"]["mean"])  # running statistics moved
    x, y = _batch(data, 30, jnp.float32)
    # evaluation uses the running averages: other running statistics, other outputs
    l_eval, _ = model.evaluate(state.params, ms, x, y)
    other = jax.tree.map(lambda a: a + 1.0, ms)
    assert float(model.evaluate(state.params, other, x, y)[0]) != pytest.approx(float(l_eval))
    # ... while training mode normalizes by the batch and ignores them
    l_train = model.loss(state.params, x, y, state=ms)
    assert float(model.loss(state.params, x, y, state=other)) == pytest.approx(float(l_train))
    with pytest.raises(ValueError, match="pass state="):
        model.loss(state.params, x, y)
    with pytest.raises(ValueError, match="per-example"):
        per_example_grads(model, state.params, x, y, state=ms)


def test_nnx_batchnorm_mask_keeps_padding_out(data):
    model = adapters.from_nnx(lambda rngs: MaskedBNNet(rngs), in_shape=(64,))
    params, s0 = model.initialize(jax.random.key(0), jnp.float64)
    x, y = _batch(data, 16)
    padded_x = jnp.concatenate([x, 100.0 * jnp.ones((4, 64))])
    padded_y = jnp.concatenate([y, y[:4]])
    mask = jnp.asarray(np.arange(20) < 16, jnp.float64)
    step = jax.jit(model.train_grad)
    l1, g1, s1 = step(params, s0, x, y)
    l2, g2, s2 = step(params, s0, padded_x, padded_y, mask)
    assert float(l2) == pytest.approx(float(l1), rel=1e-10)
    _close(g2, g1, rtol=1e-8, atol=1e-12)
    _close(s2, s1)
    state, hist = jbp.fit(
        model, jbp.optim.adam(1e-2), data, batch_size=64, epochs=1, key=jax.random.key(0)
    )
    assert np.isfinite(hist[-1]["train_loss"])


def test_nnx_dropout_is_reseeded_from_the_engine_key(data):
    model = adapters.from_nnx(lambda rngs: DropNet(rngs), in_shape=(64,))
    assert model.stochastic and not model.batch_coupled
    params, state = model.initialize(jax.random.key(0), jnp.float64)
    assert state == {}  # RNG streams are not model state
    x, y = _batch(data)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    step = jax.jit(lambda key: model.train_grad(params, state, x, y, key=key)[1])
    g1 = step(k1)
    _close(step(k1), g1, rtol=0, atol=0)
    g2 = step(k2)
    assert _sha(g1) != _sha(g2)
    raw = step(jax.random.PRNGKey(1))  # raw uint32 keys too
    assert _sha(raw) != _sha(g2)
    with pytest.raises(ValueError, match="pass key="):
        model.loss(params, x, y)
    a, b = model.evaluate(params, state, x, y), model.evaluate(params, state, x, y)
    assert float(a[0]) == float(b[0])  # evaluation: no dropout
    assert float(model.loss(params, x, y, train=False)) == pytest.approx(float(a[0]))
    full, hist = _fit(model, data, 3)
    half, _ = _fit(model, data, 1)
    resumed, _ = _fit(model, data, 3, state=half)
    assert _sha(resumed) == _sha(full)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_nnx_dropout_per_example_grads_draw_per_example(data):
    model = adapters.from_nnx(lambda rngs: DropNet(rngs), in_shape=(64,))
    params, _ = model.initialize(jax.random.key(0), jnp.float64)
    x, y = _batch(data)
    x, y = jnp.concatenate([x[:3], x[:1]]), jnp.concatenate([y[:3], y[:1]])  # row 3 = row 0
    key = jax.random.key(5)
    pe = jax.jit(functools.partial(per_example_grads, model))(params, x, y, key=key)
    for i in range(4):  # example i: its own key, fold_in(key, i)
        one = model.loss_and_grad(
            params, x[i : i + 1], y[i : i + 1], key=jax.random.fold_in(key, i)
        )
        _close(jax.tree.map(lambda g, i=i: g[i], pe), one[1])
    same = jax.tree.leaves(jax.tree.map(lambda g: bool(jnp.all(g[0] == g[3])), pe))
    assert not all(same)  # one example twice: two different dropout masks


# ----------------------------------------------------------------------- devices
DEVICE_RUN = {"batch_size": 50, "epochs": 2, "key": jax.random.key(0), "dtype": jnp.float64}
MODELS = {"function": FN, "nnx": NNX}


@pytest.fixture(scope="module")
def one_device(data):
    return {k: jbp.fit(m, jbp.optim.adam(1e-2), data, **DEVICE_RUN) for k, m in MODELS.items()}


@pytest.mark.parametrize("devices", [1, 2])
@pytest.mark.parametrize("which", ["function", "nnx"])
def test_devices(data, one_device, which, devices):
    ref, ref_hist = one_device[which]
    state, hist = jbp.fit(MODELS[which], jbp.optim.adam(1e-2), data, devices=devices, **DEVICE_RUN)
    _close(state.params, ref.params, rtol=1e-9, atol=1e-12)
    assert hist[-1]["test_loss"] == pytest.approx(ref_hist[-1]["test_loss"], rel=1e-9)
    assert int(state.step) == int(ref.step) == 12
