"""The hand-written backward (BP1–BP4) against jax.grad and finite differences, float64.

One table drives the gradient tests: every hidden activation × (output, cost) pair ×
depth 1–4 × batch size.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jbp
from jbp.gradient_check import rel_diff

HIDDEN = ("sigmoid", "tanh", "relu", "identity")
HEADS = (
    ("identity", "squared_error"),
    ("sigmoid", "squared_error"),
    ("softmax", "squared_error"),
    ("sigmoid", "binary_cross_entropy"),
    ("softmax", "cross_entropy"),
)
WIDTHS = (4, 5, 6, 3, 4)  # sizes for depth d: WIDTHS[:d] + (n_out,)


def _table():
    for depth, (out, cost), batch in itertools.product((1, 2, 3, 4), HEADS, (1, 7)):
        acts = ("identity",) if depth == 1 else HIDDEN  # no hidden layer at depth 1
        for act in acts:
            yield depth, act, out, cost, batch


TABLE = list(_table())


def make_case(depth, act, out, cost, batch, seed=0, n_out=3):
    sizes = WIDTHS[:depth] + (n_out,)
    net = jbp.MLP(sizes, act, out, cost)
    k = jax.random.split(jax.random.key(seed), 4)
    params = net.init(k[0], jnp.float64)
    # non-zero biases: no pre-activation sits exactly on relu's kink at 0
    params = [
        dict(p, b=0.1 * jax.random.normal(kk, p["b"].shape, jnp.float64))
        for p, kk in zip(params, jax.random.split(k[1], len(params)), strict=True)
    ]
    x = jax.random.normal(k[2], (batch, sizes[0]), jnp.float64)
    if out == "softmax":
        y = jax.random.randint(k[3], (batch,), 0, n_out)
    elif out == "sigmoid":
        y = jax.random.bernoulli(k[3], 0.5, (batch, n_out)).astype(jnp.float64)
    else:
        y = jax.random.normal(k[3], (batch, n_out), jnp.float64)
    return net, params, x, y


@pytest.mark.parametrize("depth,act,out,cost,batch", TABLE)
def test_manual_backward_matches_autodiff_and_finite_differences(depth, act, out, cost, batch):
    net, params, x, y = make_case(depth, act, out, cost, batch)
    report = jbp.gradcheck(net, params, x, y)
    assert report.rel_autodiff < 1e-10, report.table()
    assert report.rel_fd < 1e-7, report.table()
    loss_manual, _ = net.loss_and_grad(params, x, y)
    np.testing.assert_allclose(loss_manual, net.loss(params, x, y), rtol=1e-14)


def test_mixed_activations_per_hidden_layer():
    _, params, x, y = make_case(3, "relu", "softmax", "cross_entropy", 5)
    net = jbp.MLP((4, 5, 6, 3), ("relu", "tanh"), "softmax", "cross_entropy")
    report = jbp.gradcheck(net, params, x, y)
    assert report.ok, report.table()


@settings(max_examples=12, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    n_out=st.integers(2, 5),
    batch=st.integers(1, 9),
    act=st.sampled_from(HIDDEN),
    head=st.sampled_from(HEADS),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_against_autodiff(sizes, n_out, batch, act, head, seed):
    out, cost = head
    net = jbp.MLP((*sizes, n_out), act, out, cost)
    k = jax.random.split(jax.random.key(seed), 3)
    params = net.init(k[0], jnp.float64)
    x = jax.random.normal(k[1], (batch, sizes[0]), jnp.float64)
    y = jax.random.randint(k[2], (batch,), 0, n_out)
    both = jax.jit(lambda p: (net.loss_and_grad(p, x, y)[1], jax.grad(net.loss)(p, x, y)))
    g, g_ref = both(params)  # one compilation per drawn shape
    flat = lambda t: jnp.concatenate([v.ravel() for v in jax.tree.leaves(t)])  # noqa: E731
    assert rel_diff(flat(g), flat(g_ref)) < 1e-10


@pytest.mark.parametrize(
    "out,cost",
    [("softmax", "cross_entropy"), ("softmax", "squared_error"), ("sigmoid", "squared_error")],
)
def test_integer_labels_equal_one_hot(out, cost):
    net, params, x, _ = make_case(2, "tanh", out, cost, 6)
    labels = jnp.array([0, 2, 1, 1, 0, 2])
    onehot = jax.nn.one_hot(labels, 3, dtype=jnp.float64)
    l1, g1 = net.loss_and_grad(params, x, labels)
    l2, g2 = net.loss_and_grad(params, x, onehot)
    assert float(l1) == float(l2)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_binary_labels_for_one_sigmoid_unit():
    net = jbp.MLP((3, 4, 1), "tanh", "sigmoid", "binary_cross_entropy")
    params = net.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    labels = jnp.array([0, 1, 1, 0, 1])
    l1, g1 = net.loss_and_grad(params, x, labels)
    l2, g2 = net.loss_and_grad(params, x, labels[:, None].astype(jnp.float64))
    assert float(l1) == float(l2)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), g1, g2))


def test_mask_equals_unpadded_batch():
    net, params, x, y = make_case(3, "relu", "softmax", "cross_entropy", 7)
    pad_x = jnp.concatenate([x, 100 * jnp.ones((3, x.shape[1]))])
    pad_y = jnp.concatenate([y, jnp.zeros((3,), y.dtype)])
    mask = jnp.concatenate([jnp.ones(7), jnp.zeros(3)])
    l1, g1 = net.loss_and_grad(params, x, y)
    l2, g2 = net.loss_and_grad(params, pad_x, pad_y, mask)
    np.testing.assert_allclose(l1, l2, rtol=1e-14)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)
    np.testing.assert_allclose(net.loss(params, pad_x, pad_y, mask), l1, rtol=1e-14)


# ---------------------------------------------------------------- custom_vjp bridge
def test_jax_grad_through_manual_backward():
    net, params, x, y = make_case(3, "tanh", "softmax", "cross_entropy", 5)
    g = jax.grad(net.manual_loss)(params, x, y)
    _, g_manual = net.loss_and_grad(params, x, y)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), g, g_manual))
    # ∂loss/∂x also comes from the manual backward, and matches autodiff
    gx = jax.grad(net.manual_loss, argnums=1)(params, x, y)
    np.testing.assert_allclose(gx, jax.grad(net.loss, argnums=1)(params, x, y), rtol=1e-10)
    # composes with JAX code: a scaled loss inside jit
    g2 = jax.jit(jax.grad(lambda p: 3.0 * net.manual_loss(p, x, y)))(params)
    for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g_manual), strict=True):
        np.testing.assert_allclose(a, 3.0 * b, rtol=1e-14)


def test_bridge_really_uses_the_manual_backward(monkeypatch):
    """A deliberately wrong backward shows up in jax.grad(net.manual_loss)."""
    net, params, x, y = make_case(2, "tanh", "softmax", "cross_entropy", 5)
    right = jax.grad(net.manual_loss)(params, x, y)
    fwd, _ = jbp.activations.ACTIVATIONS["tanh"]
    wrong_bwd = lambda da, z, a: da * (1 - a)  # noqa: E731 - wrong: not 1 − a²
    monkeypatch.setitem(jbp.activations.ACTIVATIONS, "tanh", (fwd, wrong_bwd))
    wrong = jax.grad(net.manual_loss)(params, x, y)
    ref = jax.grad(net.loss)(params, x, y)  # autodiff ignores the manual backward
    assert rel_diff(wrong[0]["W"], ref[0]["W"]) > 1e-3
    assert rel_diff(right[0]["W"], ref[0]["W"]) < 1e-10
    np.testing.assert_array_equal(wrong[0]["W"], net.loss_and_grad(params, x, y)[1][0]["W"])


# ---------------------------------------------------------------- per-example grads
def test_per_example_grads_mean_is_batch_gradient():
    net, params, x, y = make_case(3, "sigmoid", "softmax", "cross_entropy", 6)
    pe = jbp.per_example_grads(net, params, x, y)
    _, g = net.loss_and_grad(params, x, y)
    for a, b in zip(jax.tree.leaves(pe), jax.tree.leaves(g), strict=True):
        assert a.shape == (6,) + b.shape
        np.testing.assert_allclose(a.mean(0), b, rtol=1e-12, atol=1e-16)
    one = net.loss_and_grad(params, x[2:3], y[2:3])[1]
    np.testing.assert_allclose(pe[0]["W"][2], one[0]["W"], rtol=1e-14)


# ---------------------------------------------------------------- the spec itself
def test_init_shapes_dtype_and_scale():
    net = jbp.MLP((64, 30, 10), "relu", "softmax", "cross_entropy")
    params = net.init(jax.random.key(0))
    assert [(p["W"].shape, p["b"].shape) for p in params] == [((64, 30), (30,)), ((30, 10), (10,))]
    assert params[0]["W"].dtype == jnp.float32
    np.testing.assert_allclose(jnp.std(params[0]["W"]), np.sqrt(2 / 64), rtol=0.1)  # He
    np.testing.assert_allclose(jnp.std(params[1]["W"]), np.sqrt(1 / 30), rtol=0.2)  # LeCun
    assert net.n_params == 64 * 30 + 30 + 30 * 10 + 10


def test_spec_is_hashable_and_a_jit_static_argument():
    a = jbp.MLP((4, 5, 3), "tanh", "softmax", "cross_entropy")
    b = jbp.MLP([4, 5, 3], "tanh", "softmax", "cross_entropy")
    assert a == b and hash(a) == hash(b)
    f = jax.jit(lambda net, p, x: net.apply(p, x), static_argnums=0)
    p = a.init(jax.random.key(0))
    out = f(a, p, jnp.ones((2, 4)))
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out.sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sizes=(4, 3), activation="tanh", output="softmax", cost="mse"), "unknown cost 'mse'"),
        (dict(sizes=(4, 5, 3), activation="swish"), "unknown activation 'swish'"),
        (dict(sizes=(4, 3), output="relu"), "unknown output 'relu'"),
        (dict(sizes=(4, 3), output="sigmoid", cost="cross_entropy"), "needs output 'softmax'"),
        (
            dict(sizes=(4, 3), output="softmax", cost="binary_cross_entropy"),
            "needs output 'sigmoid'",
        ),
        (dict(sizes=(4, 0, 3)), r"positive integers, got sizes=\(4, 0, 3\)"),
        (dict(sizes=(4, 2.5, 3)), "positive integers"),
        (dict(sizes=(4,)), "at least an input and an output"),
        (dict(sizes=(4, 5, 5, 3), activation=("relu",)), "one name per hidden layer"),
    ],
)
def test_bad_spec_is_refused_with_a_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jbp.MLP(**kwargs)


def test_bad_inputs_are_refused_with_a_message():
    net = jbp.MLP((4, 5, 3), "tanh", "softmax", "cross_entropy")
    params = net.init(jax.random.key(0), jnp.float64)
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\).*got \(2, 5\)"):
        net.loss(params, jnp.ones((2, 5)), jnp.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*got labels in \[0, 3\]"):
        net.loss(params, x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\].*\[-1, 1\]"):
        net.loss_and_grad(params, x, jnp.array([-1, 1]))
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(2,\)"):
        net.loss(params, x, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="layer 1 expects W"):
        net.check_params(jbp.MLP((4, 6, 3)).init(jax.random.key(0)))
