"""LayerNorm and BatchNorm: checked backwards, masks, running statistics, flax, devices.

The conftest gives float64 and 4 simulated CPU devices.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jbp
from jbp.layers import batch_axis
from jbp.norms import BatchNorm, LayerNorm

F64 = jnp.float64


def _normal(seed, shape, scale=1.0, shift=0.0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape) * scale + shift, F64)


def _params(features, seed=0):
    """γ ≠ 1, β ≠ 0, so a backward that forgets a term vanishing at init is seen."""
    return {"gamma": _normal(seed, (features,), 0.5, 1.0), "beta": _normal(seed + 1, (features,))}


# ------------------------------------------------------------------------- check_layer
@pytest.mark.parametrize("in_shape", [(6,), (3, 5), (2, 3, 4)])
def test_layernorm_passes_check_layer(in_shape):
    report = jbp.check_layer(LayerNorm(), in_shape, batch=4)
    assert report.ok, report.table()
    assert report.checks["batch_independent"].ok is True  # examples stay independent


@pytest.mark.parametrize("in_shape", [(6,), (2, 3, 4)])  # features; NHWC images
def test_batchnorm_train_mode_passes_check_layer(in_shape):
    report = jbp.check_layer(BatchNorm(), in_shape, batch=5)
    assert report.ok, report.table()
    assert report.checks["batch_independent"].ok is None  # n/a: coupled by design


def test_batchnorm_eval_mode_passes_check_layer():
    state = {"mean": _normal(2, (4,)), "var": _normal(3, (4,), 0.3, 1.5) ** 2}
    report = jbp.check_layer(BatchNorm(), (4,), batch=5, train=False, state=state)
    assert report.ok, report.table()


def test_layernorm_matches_the_formula_and_flax():
    from flax import nnx

    x = _normal(0, (4, 3, 6), 2.0, 1.0)
    params = _params(6)
    y, _, state = LayerNorm().forward(params, (), x)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = params["gamma"] * (x - mu) / np.sqrt(var + 1e-5) + params["beta"]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    assert state == ()
    ln = nnx.LayerNorm(6, epsilon=1e-5, param_dtype=F64, dtype=F64, rngs=nnx.Rngs(0))
    ln.scale[...], ln.bias[...] = params["gamma"], params["beta"]
    np.testing.assert_allclose(y, ln(x), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- masks
def test_batchnorm_with_a_mask_is_batchnorm_on_the_real_rows():
    bn, params = BatchNorm(), _params(5)
    _, state0, _ = bn.init(jax.random.key(0), (5,), F64)
    x = _normal(0, (7, 5), 2.0, 1.0)
    dy = _normal(1, (7, 5))  # nonzero on the padded rows too: they must not count
    mask = jnp.array([1, 1, 0, 1, 1, 1, 0], F64)
    real = np.flatnonzero(np.asarray(mask))
    pad = np.flatnonzero(np.asarray(mask) == 0)

    y, cache, state = bn.forward(params, state0, x, train=True, mask=mask)
    dp, dx = bn.backward(params, cache, dy)
    y_r, cache_r, state_r = bn.forward(params, state0, x[real], train=True)
    dp_r, dx_r = bn.backward(params, cache_r, dy[real])

    np.testing.assert_allclose(y[real], y_r, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx[real], dx_r, rtol=1e-12, atol=1e-13)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(dp[k], dp_r[k], rtol=1e-12, atol=1e-13)
    for k in ("mean", "var"):
        np.testing.assert_allclose(state[k], state_r[k], rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(dx[pad], 0.0)
    np.testing.assert_array_equal(y[pad], 0.0)  # padded outputs are 0 in training

    # ... and the masked backward is the exact VJP of the masked forward
    _, vjp = jax.vjp(lambda p, x: bn.forward(p, state0, x, train=True, mask=mask)[0], params, x)
    ref_p, ref_x = vjp(dy)
    np.testing.assert_allclose(dx, ref_x, rtol=1e-12, atol=1e-13)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(dp[k], ref_p[k], rtol=1e-12, atol=1e-13)


def test_padded_rows_do_not_move_the_statistics():
    bn, params = BatchNorm(), _params(3)
    _, state0, _ = bn.init(None, (3,), F64)
    x = _normal(0, (6, 3))
    mask = jnp.array([1, 1, 1, 1, 0, 0], F64)
    huge = x.at[4:].set(1e6)  # whatever sits in the padded rows
    a = bn.forward(params, state0, x, train=True, mask=mask)
    b = bn.forward(params, state0, huge, train=True, mask=mask)
    np.testing.assert_array_equal(a[0], b[0])
    for k in ("mean", "var"):
        np.testing.assert_array_equal(a[2][k], b[2][k])


# -------------------------------------------------------------------- running statistics
def test_running_statistics_follow_the_ewma_pinned_by_hand():
    bn = BatchNorm(momentum=0.9)
    params, state, _ = bn.init(None, (2,), F64)
    assert np.array_equal(state["mean"], [0, 0]) and np.array_equal(state["var"], [1, 1])
    # step 1: feature 0 ∈ {1, 3}: mean 2, biased var 1; feature 1 ∈ {−1, −1}: mean −1, var 0
    x1 = jnp.array([[1.0, -1.0], [3.0, -1.0]])
    _, _, state = bn.forward(params, state, x1, train=True)
    np.testing.assert_allclose(state["mean"], [0.1 * 2, 0.1 * -1], rtol=1e-15)
    np.testing.assert_allclose(state["var"], [0.9 + 0.1 * 1, 0.9 + 0.1 * 0], rtol=1e-15)
    # step 2, the last row padded: feature 0 ∈ {0, 4, 8}: mean 4, biased var 32/3 (not 16)
    x2 = jnp.array([[0.0, 2.0], [4.0, 2.0], [8.0, 5.0], [100.0, 100.0]])
    mask = jnp.array([1.0, 1.0, 1.0, 0.0])
    _, _, state = bn.forward(params, state, x2, train=True, mask=mask)
    np.testing.assert_allclose(state["mean"], [0.9 * 0.2 + 0.4, 0.9 * -0.1 + 0.3], rtol=1e-14)
    np.testing.assert_allclose(
        state["var"], [0.9 * 1.0 + 0.1 * 32 / 3, 0.9 * 0.9 + 0.1 * 2.0], rtol=1e-14
    )
    # evaluation: the running statistics, the state unchanged
    x = jnp.array([[1.0, 0.0]])
    y, _, same = bn.forward(params, state, x, train=False)
    np.testing.assert_allclose(y, (x - state["mean"]) / np.sqrt(state["var"] + 1e-5), rtol=1e-14)
    assert same is state


def test_nhwc_input_normalises_per_channel():
    bn, params = BatchNorm(), _params(3)
    _, state0, out = bn.init(None, (4, 5, 3), F64)
    assert out == (4, 5, 3)
    x = _normal(0, (2, 4, 5, 3), 2.0, 1.0)
    dy = _normal(1, (2, 4, 5, 3))
    y, cache, state = bn.forward(params, state0, x, train=True)
    dp, dx = bn.backward(params, cache, dy)
    # the same as BatchNorm over the 2·4·5 positions as rows
    y2, cache2, state2 = bn.forward(params, state0, x.reshape(-1, 3), train=True)
    dp2, dx2 = bn.backward(params, cache2, dy.reshape(-1, 3))
    np.testing.assert_allclose(y, y2.reshape(y.shape), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dx, dx2.reshape(dx.shape), rtol=1e-12, atol=1e-13)
    for k in ("gamma", "beta"):
        np.testing.assert_allclose(dp[k], dp2[k], rtol=1e-12)
    for k in ("mean", "var"):
        np.testing.assert_allclose(state[k], state2[k], rtol=1e-13)
    np.testing.assert_allclose(state["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-13)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-6), (jnp.float64, 1e-12)])
def test_batchnorm_matches_flax_nnx(dtype, tol):
    """Running statistics, train-mode output and gradients as flax.nnx.BatchNorm's."""
    from flax import nnx

    ref = nnx.BatchNorm(5, momentum=0.9, epsilon=1e-5, dtype=dtype, param_dtype=dtype,
                        rngs=nnx.Rngs(0))  # fmt: skip
    ref.mean = nnx.BatchStat(jnp.zeros(5, dtype))  # flax keeps float32 statistics otherwise
    ref.var = nnx.BatchStat(jnp.ones(5, dtype))
    bn = BatchNorm(momentum=0.9, eps=1e-5)
    _, state, _ = bn.init(None, (5,), dtype)
    params = jax.tree.map(lambda v: v.astype(dtype), _params(5))
    ref.scale[...], ref.bias[...] = params["gamma"], params["beta"]
    mask = jnp.array([1, 1, 1, 1, 1, 1, 1, 0, 0], dtype)
    for step in range(3):
        x = jnp.asarray(np.random.default_rng(step).standard_normal((9, 5)) * 2 + 1, dtype)
        dy = (
            jnp.asarray(np.random.default_rng(10 + step).standard_normal((9, 5)), dtype)
            * mask[:, None]
        )
        m = mask if step else None  # one step without a mask, then ragged ones

        fmask = None if m is None else m[:, None] > 0
        graphdef, flax_params, flax_stats = nnx.split(ref, nnx.Param, ...)

        def flax_y(flax_params, x, fmask=fmask, graphdef=graphdef, flax_stats=flax_stats):
            copy = nnx.merge(graphdef, flax_params, flax_stats, copy=True)  # ref stays as is
            return copy(x, use_running_average=False, mask=fmask)

        _, vjp = jax.vjp(flax_y, flax_params, x)
        y_ref = ref(x, use_running_average=False, mask=fmask)  # updates ref's statistics
        y, cache, state = bn.forward(params, state, x, train=True, mask=m)
        dp, dx = bn.backward(params, cache, dy)
        real = slice(None) if m is None else slice(0, 7)
        np.testing.assert_allclose(y[real], y_ref[real], rtol=tol, atol=tol)
        np.testing.assert_allclose(state["mean"], ref.mean[...], rtol=tol, atol=tol)
        np.testing.assert_allclose(state["var"], ref.var[...], rtol=tol, atol=tol)
        dp_ref, dx_ref = vjp(dy)
        dg_ref, db_ref = dp_ref["scale"][...], dp_ref["bias"][...]
        for a, b in ((dp["gamma"], dg_ref), (dp["beta"], db_ref), (dx, dx_ref)):
            np.testing.assert_allclose(a, b, rtol=10 * tol, atol=10 * tol)
        assert y.dtype == state["var"].dtype == dtype


# ---------------------------------------------------------------------------- devices
@pytest.mark.parametrize("shape", [(8, 5), (8, 2, 3, 5)])
def test_two_devices_give_the_one_device_batchnorm(shape):
    """shard_map over 2 devices, traced inside batch_axis("batch"): outputs, dx, psum of the
    per-device dγ/dβ and the running statistics equal one device on the whole batch, with
    shards holding different numbers of real rows (4 and 2)."""
    bn, params = BatchNorm(), _params(shape[-1])
    state0 = {"mean": _normal(5, shape[-1:]), "var": _normal(6, shape[-1:], 0.2, 1.0) ** 2}
    x, dy = _normal(0, shape, 2.0, 1.0), _normal(1, shape)
    mask = jnp.array([1, 1, 1, 1, 1, 1, 0, 0], F64)

    def local(params, state, x, dy, mask):
        y, cache, new_state = bn.forward(params, state, x, train=True, mask=mask)
        dp, dx = bn.backward(params, cache, dy)
        return y, dx, jax.lax.psum(dp, "batch"), new_state

    def traced(*args):
        with batch_axis("batch"):
            return local(*args)

    mesh = jbp.parallel.make_mesh(2)
    b = P("batch")
    specs = (P(), P(), b, b, b)
    args = [
        jax.device_put(a, NamedSharding(mesh, s))
        for a, s in zip((params, state0, x, dy, mask), specs, strict=True)
    ]
    two = jax.jit(jax.shard_map(traced, mesh=mesh, in_specs=specs, out_specs=(b, b, P(), P())))(
        *args
    )
    y1, cache, s1 = bn.forward(params, state0, x, train=True, mask=mask)
    dp1, dx1 = bn.backward(params, cache, dy)
    one = (y1, dx1, dp1, s1)
    assert jbp.layers.current_batch_axis() is None
    for a, r in zip(jax.tree.leaves(two), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)
    # without the psum the devices would normalise with their own statistics
    alone = jax.jit(
        jax.shard_map(
            local, mesh=mesh, in_specs=specs, out_specs=(b, b, P(), P()), check_vma=False
        )  # fmt: skip
    )(*args)
    assert not np.allclose(alone[0], y1, atol=1e-6)


# ------------------------------------------------------------------------- training
NET = jbp.Network(
    jbp.Sequential(jbp.Dense(16), BatchNorm(), jbp.Activation("relu"), jbp.Dense(10)),
    in_shape=(64,),
)


@pytest.fixture(scope="module")
def digits():
    ds = jbp.data.load("digits")
    return jbp.data.Dataset(ds.x_train[:300], ds.y_train[:300], ds.x_test[:100], ds.y_test[:100])


def _fit(data, batch_size, epochs=2, opt=None, **kw):
    opt = jbp.optim.adam(1e-2) if opt is None else opt
    return jbp.fit(NET, opt, data, batch_size=batch_size, epochs=epochs, key=jax.random.key(0),
                   dtype=F64, **kw)  # fmt: skip


def test_a_network_with_batchnorm_trains_and_updates_its_running_statistics(digits):
    assert NET.batch_coupled
    state, hist = _fit(digits, 37, epochs=3)  # 300 = 8·37 + 4: a ragged last batch
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_accuracy"] > 0.5
    _, init_state = NET.initialize(jax.random.key(0), F64)
    stats = state.model_state[1]
    assert set(stats) == {"mean", "var"} and stats["var"].dtype == F64
    assert not np.allclose(stats["mean"], init_state[1]["mean"])
    assert not np.allclose(stats["var"], init_state[1]["var"])
    assert np.all(np.asarray(stats["var"]) > 0)


def test_the_manual_backward_equals_autodiff_through_ragged_batches(digits):
    """jax.grad of the same forward, padded rows masked: the same parameters and statistics."""
    kw = dict(epochs=1, key=jax.random.key(0), dtype=F64)
    sgd = jbp.optim.sgd(0.1)
    manual, _ = jbp.fit(NET, sgd, digits, batch_size=37, **kw)
    auto, _ = jbp.fit(NET, sgd, digits, batch_size=37, backward="autodiff", **kw)
    leaves = lambda s: jax.tree.leaves((s.params, s.model_state))  # noqa: E731
    for a, b in zip(leaves(manual), leaves(auto), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def _same_run(a, b, tol=1e-10):
    (s1, h1), (s2, h2) = a, b
    for r1, r2 in zip(h1, h2, strict=True):
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=tol, abs=tol)
    leaves = lambda s: jax.tree.leaves((s.params, s.model_state))  # noqa: E731
    for x1, x2 in zip(leaves(s1), leaves(s2), strict=True):
        np.testing.assert_allclose(x1, x2, rtol=tol, atol=tol)


def test_two_devices_train_the_one_device_network(digits):
    """batch 40: 300 = 7·40 + 20, so the last batch is ragged (its 20 real rows all on
    device 0); every batch gives both devices the same number of real rows, or all to one.

    Plain SGD: the Dense bias before BatchNorm has a gradient that is 0 up to rounding, and
    Adam would turn that rounding noise into ~1e-10 steps that differ between the two runs.
    """
    sgd = jbp.optim.sgd(0.1)
    _same_run(_fit(digits, 40, opt=sgd), _fit(digits, 40, opt=sgd, devices=2))
    # with Adam the test losses still agree to 1e-10
    _, h1 = _fit(digits, 40)
    _, h2 = _fit(digits, 40, devices=2)
    assert h2[-1]["test_loss"] == pytest.approx(h1[-1]["test_loss"], rel=1e-10)


def test_two_devices_with_unequal_shards_train_the_one_device_network(digits):
    sgd = jbp.optim.sgd(0.1)
    _same_run(_fit(digits, 37, opt=sgd), _fit(digits, 37, opt=sgd, devices=2))
