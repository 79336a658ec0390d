"""gradcheck: the report's numbers, finite-difference evaluation counts, and that it can fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import gradient_check
from jbp.gradient_check import finite_differences, rel_diff


def _case():
    net = jbp.MLP((3, 4, 2), "tanh", "softmax", "cross_entropy")
    params = net.init(jax.random.key(0), jnp.float64)
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    y = jnp.array([0, 1, 1, 0, 1])
    return net, params, x, y


def test_rel_diff():
    assert rel_diff(jnp.zeros(3), jnp.zeros(3)) == 0.0
    assert rel_diff(jnp.array([1.0, 0.0]), jnp.array([-1.0, 0.0])) == 1.0
    np.testing.assert_allclose(rel_diff(jnp.array([3.0]), jnp.array([1.0])), 0.5)


@pytest.mark.parametrize(
    "method,evals", [("central", lambda n: 2 * n), ("forward", lambda n: n + 1)]
)
def test_finite_differences_count_and_accuracy(method, evals):
    def f(v):
        return jnp.sum(jnp.sin(v) * v**2)

    v = jnp.linspace(-1, 1, 37, dtype=jnp.float64)
    g, n_evals = finite_differences(f, v, method=method, chunk=8)
    assert n_evals == evals(37)
    tol = 1e-8 if method == "central" else 1e-6
    np.testing.assert_allclose(g, jax.grad(f)(v), rtol=tol, atol=tol)


def test_report_passes_for_the_manual_backward():
    net, params, x, y = _case()
    rep = jbp.gradcheck(net, params, x, y)
    assert rep.ok and rep.n_params == net.n_params == 3 * 4 + 4 + 4 * 2 + 2
    assert rep.fd_evals == 2 * rep.n_params
    assert [(r.layer, r.param) for r in rep.rows] == [(1, "W"), (1, "b"), (2, "W"), (2, "b")]
    assert all(r.rel_autodiff < 1e-10 and r.rel_fd < 1e-7 for r in rep.rows)
    d = rep.to_dict()
    assert d["ok"] is True and d["seconds_fd"] > 0 and d["dtype"] == "float64"
    assert "PASS" in rep.table()


def test_report_fails_for_a_wrong_backward(monkeypatch):
    net, params, x, y = _case()
    fwd, _ = jbp.activations.ACTIVATIONS["tanh"]
    monkeypatch.setitem(
        jbp.activations.ACTIVATIONS, "tanh", (fwd, lambda da, z, a: da * (1 - a * a) * 1.001)
    )
    rep = jbp.gradcheck(net, params, x, y)
    assert not rep.ok and "FAIL" in rep.table()
    bad = {(r.layer, r.param) for r in rep.rows if r.rel_autodiff > 1e-10}
    assert bad == {(1, "W"), (1, "b")}  # only the layer below the wrong derivative


def test_finite_differences_on_chosen_coordinates():
    def f(v):
        return jnp.sum(jnp.sin(v) * v**2)

    v = jnp.linspace(-1, 1, 37, dtype=jnp.float64)
    full, _ = finite_differences(f, v, chunk=8)
    idx = gradient_check.subset(37, 5, jax.random.key(1))
    assert len(set(idx.tolist())) == 5 and list(idx) == sorted(idx) and idx.max() < 37
    part, evals = finite_differences(f, v, chunk=8, indices=idx)
    assert evals == 10
    np.testing.assert_allclose(part, full[idx], rtol=1e-12)
    assert gradient_check.subset(37, 37) is None and gradient_check.subset(37, None) is None
    with pytest.raises(ValueError, match="coordinates must be a positive integer"):
        gradient_check.subset(37, 0)


def test_a_subset_of_coordinates_is_reported_as_one():
    net, params, x, y = _case()  # 26 parameters
    rep = jbp.gradcheck(net, params, x, y, coordinates=10, key=jax.random.key(3))
    assert rep.ok and rep.fd_subset and rep.fd_coordinates == 10 and rep.fd_evals == 20
    assert rep.rel_autodiff < 1e-10  # jax.grad is still compared on every parameter
    assert "random subset: 10 of 26 coordinates" in rep.table()
    assert rep.to_dict()["fd_subset"] is True
    sampled = [r for r in rep.rows if r.rel_fd is not None]
    assert sampled and all(r.rel_fd < 1e-7 for r in sampled)
    whole = jbp.gradcheck(net, params, x, y, coordinates=26)
    assert not whole.fd_subset and whole.fd_evals == 52 and "subset" not in whole.table()


def test_a_subset_still_fails_a_wrong_backward(monkeypatch):
    net, params, x, y = _case()
    fwd, _ = jbp.activations.ACTIVATIONS["tanh"]
    monkeypatch.setitem(
        jbp.activations.ACTIVATIONS, "tanh", (fwd, lambda da, z, a: da * (1 - a * a) * 1.001)
    )
    rep = jbp.gradcheck(net, params, x, y, coordinates=8, key=jax.random.key(0))
    assert not rep.ok and rep.rel_fd > 1e-7  # finite differences alone see it
    assert any(r.rel_fd is not None and r.rel_fd > 1e-7 for r in rep.rows if r.layer == 1)
