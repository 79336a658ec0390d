"""Conv, MaxPool, AvgPool, GlobalAvgPool and Reshape: check_layer over grids of their
hyperparameters (float64: < 1e-10 vs jax.vjp, < 1e-7 vs finite differences per leaf), forwards
equal to ``lax.conv_general_dilated`` / ``lax.reduce_window``, and max pooling's tie rule equal
to ``jax.vjp`` of ``lax.reduce_window`` max."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jbp
from jbp.conv import AvgPool, Conv, GlobalAvgPool, MaxPool, Reshape

IN_SHAPE = (5, 6, 2)
DN = ("NHWC", "HWIO", "NHWC")
KERNELS = [(1, 1), (3, 3), (2, 3)]
STRIDES = [1, 2, (2, 1)]
PADDINGS = ["SAME", "VALID", ((1, 0), (0, 2))]
# db = Σ dY does not depend on the geometry: every kernel, stride and padding is checked with
# and without a bias (the bias alternates over the 27 geometries), not all 54 combinations
CONV_GRID = [
    Conv(3, k, s, p, use_bias=(a + b + c) % 2 == 0)
    for (a, k), (b, s), (c, p) in itertools.product(
        enumerate(KERNELS), enumerate(STRIDES), enumerate(PADDINGS)
    )
]
# F(2×2, 3×3) Winograd (3×3 kernels at stride 1 only), forced on the small test input
WINOGRAD_GRID = [
    Conv(3, (3, 3), 1, p, use_bias=i % 2 == 0, algorithm="winograd")
    for i, p in enumerate(PADDINGS + [((2, 1), (0, 3))])
]
# XLA's convolution with the backward written as two convolutions: every kernel, stride and
# padding once (with a bias on every other one)
XLA_GRID = [
    Conv(3, k, s, p, use_bias=i % 2 == 0, algorithm="xla")
    for i, (k, s, p) in enumerate(zip(KERNELS * 3, STRIDES * 3, PADDINGS * 3, strict=True))
] + [Conv(2, (2, 3), (2, 1), ((2, 1), (0, 3)), algorithm="xla")]
# one input channel (the forward as kh·kw broadcast multiply-adds instead of P·Wₘ)
ONE_CHANNEL_GRID = [
    Conv(3, k, s, p, use_bias=i % 2 == 1, algorithm="patches")
    for i, (k, s, p) in enumerate(zip(KERNELS * 3, STRIDES * 3, PADDINGS * 3, strict=True))
]
# windows, with strides equal to the window and smaller (overlapping windows), VALID and SAME
POOL_GEOMETRY = [
    (w, s, p)
    for w, smaller in [((2, 2), (1, 1)), ((3, 3), (2, 1)), ((2, 3), (1, 2))]
    for s in (None, smaller)
    for p in ("VALID", "SAME")
]
MAX_GRID = [MaxPool(w, s, p) for w, s, p in POOL_GEOMETRY]
AVG_GRID = [AvgPool(w, s, p) for w, s, p in POOL_GEOMETRY] + [
    AvgPool(w, s, "SAME", count_include_pad=False) for w, s, p in POOL_GEOMETRY if p == "SAME"
]


def _ok(report):
    assert report.ok, report.table()
    assert all(r.rel_vjp < 1e-10 and r.rel_fd < 1e-7 for r in report.rows), report.table()
    return report


def _x(shape=(2, *IN_SHAPE), seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float64)


def _conv_ref(layer, params, x):
    y = lax.conv_general_dilated(
        x,
        params["W"],
        layer.strides,
        layer.padding,
        dimension_numbers=DN,
        precision=lax.Precision.HIGHEST,
    )
    return y + params["b"] if layer.use_bias else y


def _dims(layer):
    return (1, *layer.window, 1), (1, *layer.strides, 1)


def _max_ref(layer, x):
    return lax.reduce_window(x, -jnp.inf, lax.max, *_dims(layer), layer.padding)


def _avg_ref(layer, x):
    total = lax.reduce_window(x, 0.0, lax.add, *_dims(layer), layer.padding)
    if layer.count_include_pad:
        return total / (layer.window[0] * layer.window[1])
    return total / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, *_dims(layer), layer.padding)


# ------------------------------------------------------------------------ check_layer
@pytest.mark.parametrize("layer", CONV_GRID + WINOGRAD_GRID + XLA_GRID, ids=repr)
def test_conv_passes_check_layer(layer):
    report = _ok(jbp.check_layer(layer, IN_SHAPE, batch=2))
    names = {r.name for r in report.rows}
    assert names == ({"W", "b", "x"} if layer.use_bias else {"W", "x"})


@pytest.mark.parametrize("layer", ONE_CHANNEL_GRID, ids=repr)
def test_one_channel_conv_passes_check_layer_and_equals_lax(layer):
    assert layer._one_channel(1) and not layer._one_channel(2)  # the path under test, on CPU
    _ok(jbp.check_layer(layer, (*IN_SHAPE[:2], 1), batch=2))
    with jax.enable_x64(True):
        x = _x((2, *IN_SHAPE[:2], 1))
        params, _, _ = layer.init(jax.random.key(1), x.shape[1:], jnp.float64)
        y, _, _ = layer.forward(params, (), x)
        np.testing.assert_allclose(y, _conv_ref(layer, params, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", MAX_GRID + AVG_GRID, ids=repr)
def test_pools_pass_check_layer(layer):
    _ok(jbp.check_layer(layer, IN_SHAPE, batch=2))


@pytest.mark.parametrize(
    ("layer", "in_shape"),
    [(GlobalAvgPool(), IN_SHAPE), (Reshape((-1, 3)), IN_SHAPE), (Reshape((6, 5, 2)), IN_SHAPE)],
    ids=repr,
)
def test_global_avg_pool_and_reshape_pass_check_layer(layer, in_shape):
    _ok(jbp.check_layer(layer, in_shape, batch=2))


@pytest.mark.slow
def test_a_tiny_cnn_passes_check_layer_as_a_whole():
    cnn = jbp.Sequential(
        Conv(3, (3, 3)),
        jbp.Activation("relu"),
        MaxPool(),
        Conv(4, (3, 3)),
        jbp.Activation("relu"),
        MaxPool(),
        jbp.Flatten(),
        jbp.Dense(10),
    )
    _, _, out = cnn.init(jax.random.key(0), (8, 8, 1))
    assert out == (10,)
    _ok(jbp.check_layer(cnn, (8, 8, 1), batch=2))


# ---------------------------------------------------------------- forwards vs lax
@pytest.mark.parametrize("layer", CONV_GRID + WINOGRAD_GRID + XLA_GRID, ids=repr)
def test_conv_forward_equals_lax_conv(layer):
    with jax.enable_x64(True):
        x = _x()
        params, _, out = layer.init(jax.random.key(1), IN_SHAPE, jnp.float64)
        if layer.use_bias:
            params["b"] = params["b"] + 0.5
        y, _, _ = layer.forward(params, (), x)
        ref = _conv_ref(layer, params, x)
        assert y.shape == ref.shape == (2, *out)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer", MAX_GRID + AVG_GRID, ids=repr)
def test_pool_forward_equals_lax_reduce_window(layer):
    with jax.enable_x64(True):
        x = _x()
        _, _, out = layer.init(jax.random.key(0), IN_SHAPE, jnp.float64)
        y, _, _ = layer.forward((), (), x)
        ref = _max_ref(layer, x) if isinstance(layer, MaxPool) else _avg_ref(layer, x)
        assert y.shape == ref.shape == (2, *out)
        np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def test_global_avg_pool_and_reshape_forwards():
    x = _x()
    y, cache, _ = GlobalAvgPool().forward((), (), x)
    np.testing.assert_allclose(y, x.mean(axis=(1, 2)), rtol=1e-14)
    _, dx = GlobalAvgPool().backward((), cache, jnp.ones((2, 2)))
    np.testing.assert_allclose(dx, np.full(x.shape, 1 / 30), rtol=1e-14)
    y, _, _ = Reshape((-1, 3)).forward((), (), x)
    np.testing.assert_array_equal(y, x.reshape(2, 20, 3))
    assert Reshape(60).init(None, IN_SHAPE)[2] == (60,)


def test_conv_float32_matches_lax_and_runs_inside_a_scan():
    layer = Conv(4, (3, 3), 2, "SAME")
    params, _, _ = layer.init(jax.random.key(0), IN_SHAPE, jnp.float32)
    xs = _x((3, 2, *IN_SHAPE)).astype(jnp.float32)

    def step(acc, x):
        y, cache, _ = layer.forward(params, (), x)
        grads, dx = layer.backward(params, cache, y)  # the gradient of ½‖y‖²
        return acc + grads["W"], (y, dx)

    acc, (ys, dxs) = jax.jit(lambda xs: lax.scan(step, jnp.zeros_like(params["W"]), xs))(xs)
    assert ys.dtype == dxs.dtype == acc.dtype == jnp.float32
    for x, y, dx in zip(xs, ys, dxs, strict=True):
        ref, vjp = jax.vjp(lambda p, x: _conv_ref(layer, p, x), params, x)
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, vjp(ref)[1], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ winograd
def test_auto_uses_winograd_for_wide_3x3_stride_1_convolutions_on_cpu():
    assert jax.default_backend() == "cpu"
    assert Conv(64).uses_winograd(32) and Conv(64).uses_winograd(16)
    assert not Conv(32).uses_winograd(1) and not Conv(32).uses_winograd(8)
    assert not Conv(64, (5, 5)).uses_winograd(32) and not Conv(64, strides=2).uses_winograd(32)
    assert not Conv(64, algorithm="patches").uses_winograd(32)
    assert Conv(64, algorithm="winograd").uses_winograd(1)


def test_auto_winograd_layer_passes_check_layer_and_matches_patches_in_float32():
    auto, patches = Conv(4), Conv(4, algorithm="patches")
    _ok(jbp.check_layer(auto, (6, 5, 16), batch=2))
    params, _, _ = auto.init(jax.random.key(0), (14, 14, 32), jnp.float32)
    x = _x((4, 14, 14, 32)).astype(jnp.float32)
    y, cache, _ = auto.forward(params, (), x)
    y_ref, cache_ref, _ = patches.forward(params, (), x)
    assert isinstance(cache, tuple) and not isinstance(cache_ref, tuple)  # the two algorithms
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    grads, dx = auto.backward(params, cache, y)
    grads_ref, dx_ref = patches.backward(params, cache_ref, y_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    for name in ("W", "b"):
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-4, atol=1e-3)


def test_auto_never_picks_xla_on_cpu_and_xla_matches_patches_in_float32():
    assert {Conv(8).formulation(c) for c in (1, 8, 16, 64)} == {"patches", "winograd"}
    assert Conv(8, algorithm="xla").formulation(1) == "xla"
    xla, patches = Conv(4, (3, 3), 2, algorithm="xla"), Conv(4, (3, 3), 2, algorithm="patches")
    params, _, _ = xla.init(jax.random.key(0), (14, 14, 32), jnp.float32)
    x = _x((4, 14, 14, 32)).astype(jnp.float32)
    (y, cache, _), (y_ref, cache_ref, _) = (
        xla.forward(params, (), x),
        patches.forward(params, (), x),
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    (grads, dx), (grads_ref, dx_ref) = (
        xla.backward(params, cache, y),
        patches.backward(params, cache_ref, y_ref),
    )
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    for name in ("W", "b"):
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-4, atol=1e-3)


def test_auto_on_gpu_picks_xla_for_wide_layers_at_large_batches(monkeypatch):
    """The measured GPU rule: cuDNN from 16 channels and 32,768 output pixels, else patches;
    unmeasured backends keep patches."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    wide = Conv(64)
    assert wide.formulation(32, 1024 * 14 * 14) == "xla"
    assert wide.formulation(32, 128 * 14 * 14) == "patches"
    assert wide.formulation(1, 1024 * 28 * 28) == "patches"
    assert Conv(64, algorithm="winograd").formulation(32, 10**6) == "winograd"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert wide.formulation(32, 1024 * 14 * 14) == "patches"


def test_check_layer_catches_a_planted_bug_in_the_xla_backward(monkeypatch):
    """dX correlated with the kernel unflipped: wrong for x only (W's gradient is untouched)."""
    from jbp import conv_xla

    def unflipped(x, w, dy, strides, pads):
        dw, _ = conv_xla_backward(x, w, dy, strides, pads)
        _, dx = conv_xla_backward(x, w[::-1, ::-1], dy, strides, pads)
        return dw, dx

    conv_xla_backward = conv_xla.conv_backward
    layer = Conv(3, (3, 2), (2, 1), "SAME", algorithm="xla")
    jax.clear_caches()
    monkeypatch.setattr(conv_xla, "conv_backward", unflipped)
    try:
        report = jbp.check_layer(layer, IN_SHAPE, batch=2)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert {r.name for r in report.rows if not r.ok} == {"x"}
    _ok(jbp.check_layer(layer, IN_SHAPE, batch=2))


def test_check_layer_catches_a_planted_bug_in_the_winograd_backward(monkeypatch):
    """Two of the 16 transformed output gradients swapped: dW and dX are wrong, the forward
    (and so jax.vjp's reference) is not."""
    from jbp import winograd

    def swapped(dy, th, tw):
        z = winograd_gradient_transform(dy, th, tw)
        z[5], z[6] = z[6], z[5]
        return z

    winograd_gradient_transform = winograd.gradient_transform
    layer = Conv(5, (3, 3), use_bias=False, algorithm="winograd")
    jax.clear_caches()  # the jitted methods must trace the planted bug (and later, not)
    monkeypatch.setattr(winograd, "gradient_transform", swapped)
    try:
        report = jbp.check_layer(layer, (4, 5, 3), batch=2)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert not report.ok
    assert {r.name for r in report.rows if not r.ok} == {"W", "x"}
    _ok(jbp.check_layer(layer, (4, 5, 3), batch=2))


# ------------------------------------------------------------------ max pooling ties
def _tied(shape=(2, *IN_SHAPE), seed=0):
    """relu of a coarsely rounded normal: mostly zeros, and many equal positive values."""
    x = np.maximum(np.round(np.random.default_rng(seed).standard_normal(shape)), 0)
    return jnp.asarray(x, jnp.float64)


@pytest.mark.parametrize("layer", MAX_GRID, ids=repr)
def test_max_pool_gradient_on_ties_is_that_of_lax_reduce_window(layer):
    with jax.enable_x64(True):
        for x in (_tied(), jnp.zeros((2, *IN_SHAPE), jnp.float64)):
            y, cache, _ = layer.forward((), (), x)
            dy = _x(y.shape, seed=1)
            _, dx = layer.backward((), cache, dy)
            y_ref, vjp = jax.vjp(lambda x, layer=layer: _max_ref(layer, x), x)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_allclose(dx, vjp(dy)[0], rtol=1e-14, atol=1e-14)
            # jax.vjp of this forward follows the same rule
            np.testing.assert_allclose(dx, jax.vjp(layer.apply, (), (), x)[1](dy)[2], atol=1e-14)


def test_max_pool_sends_the_gradient_to_the_first_maximum_in_row_major_order():
    x = jnp.asarray([[0, 5, 1], [5, 2, 5]], jnp.float64)[None, :, :, None]
    layer = MaxPool((2, 3))
    y, cache, _ = layer.forward((), (), x)
    assert float(y[0, 0, 0, 0]) == 5
    _, dx = layer.backward((), cache, jnp.ones_like(y))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 1, 0], [0, 0, 0]])


def test_overlapping_windows_add_their_gradients():
    x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)  # the centre is every window's max
    layer = MaxPool((2, 2), strides=(1, 1))
    y, cache, _ = layer.forward((), (), x)
    _, dx = layer.backward((), cache, jnp.ones_like(y))
    assert float(dx[0, 1, 1, 0]) == 4 and float(dx.sum()) == 4


# --------------------------------------------------------------- shapes and arguments
def test_init_shapes_and_hyperparameters_normalised():
    layer = Conv(8, 3, strides=2)
    assert layer == Conv(8, (3, 3), (2, 2), "same") and hash(layer) == hash(Conv(8, (3, 3), 2))
    params, state, out = layer.init(jax.random.key(0), (28, 28, 1))
    assert params["W"].shape == (3, 3, 1, 8) and params["b"].shape == (8,) and state == ()
    assert out == (14, 14, 8)
    assert Conv(8, (5, 3), padding="VALID").init(jax.random.key(0), (28, 28, 1))[2] == (24, 26, 8)
    assert "b" not in Conv(8, use_bias=False).init(jax.random.key(0), (4, 4, 1))[0]
    assert Conv(2, padding=[[1, 0], [0, 2]]).padding == ((1, 0), (0, 2))
    assert MaxPool().strides == (2, 2) and MaxPool(3) == MaxPool((3, 3), (3, 3), "VALID")
    assert MaxPool().init(None, (28, 28, 32))[2] == (14, 14, 32)
    assert AvgPool(2, 1, "SAME").init(None, (5, 6, 2))[2] == (5, 6, 2)
    assert GlobalAvgPool().init(None, (7, 7, 16))[2] == (16,)


@pytest.mark.parametrize(
    ("rule", "var"), [("he", 2 / 288), ("lecun", 1 / 288), ("glorot", 2 / 864)]
)
def test_conv_initializers(rule, var):
    w = Conv(64, initializer=rule).init(jax.random.key(0), (8, 8, 32))[0]["W"]
    assert abs(float(jnp.var(w)) / var - 1) < 0.05


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Conv(0), "features"),
        (lambda: Conv(2.5), "features"),
        (lambda: Conv(4, kernel_size=(0, 3)), "kernel_size"),
        (lambda: Conv(4, kernel_size=(3, 3, 3)), "kernel_size"),
        (lambda: Conv(4, strides=-1), "strides"),
        (lambda: Conv(4, padding="FULL"), "padding"),
        (lambda: Conv(4, padding=((1, 2),)), "padding"),
        (lambda: Conv(4, padding=((1, -1), (0, 0))), "padding"),
        (lambda: Conv(4, use_bias="yes"), "use_bias"),
        (lambda: Conv(4, initializer="xavier"), "initializer"),
        (lambda: Conv(4, algorithm="fft"), "algorithm"),
        (lambda: Conv(4, (5, 5), algorithm="winograd"), "winograd"),
        (lambda: Conv(4, strides=2, algorithm="winograd"), "winograd"),
        (lambda: MaxPool(window=0), "window"),
        (lambda: MaxPool(strides=(1, 0)), "strides"),
        (lambda: MaxPool(padding=((2, 0), (0, 0))), "padding"),
        (lambda: AvgPool(padding="full"), "padding"),
        (lambda: AvgPool(count_include_pad=None), "count_include_pad"),
        (lambda: Reshape((-1, -1)), "shape"),
        (lambda: Reshape((0, 3)), "shape"),
        (lambda: Conv(4).init(jax.random.key(0), (28, 28)), "in_shape"),
        (lambda: Conv(4, 5, padding="VALID").init(jax.random.key(0), (4, 8, 1)), "does not fit"),
        (lambda: MaxPool().init(None, (28, 28)), "in_shape"),
        (lambda: GlobalAvgPool().init(None, (28,)), "in_shape"),
        (lambda: Reshape((7, -1)).init(None, (5, 6, 2)), "cannot turn"),
        (lambda: Reshape((7, 9)).init(None, (5, 6, 2)), "cannot turn"),
    ],
)
def test_bad_hyperparameters_and_shapes_raise_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()
