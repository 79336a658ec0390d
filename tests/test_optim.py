"""jbp.optim: hand-worked steps, equality with optax, convergence, no recompiles, checks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jbp import optim, schedules

# --- a real objective on a nested pytree: least squares, y ≈ x·W + b + s ---

_X = jax.random.normal(jax.random.key(0), (32, 5), dtype=jnp.float64)
_Y = jax.random.normal(jax.random.key(1), (32, 3), dtype=jnp.float64)


def _params0():
    k1, k2 = jax.random.split(jax.random.key(2))
    return {
        "W": 0.5 * jax.random.normal(k1, (5, 3), dtype=jnp.float64),
        "b": 0.1 * jax.random.normal(k2, (3,), dtype=jnp.float64),
        "s": jnp.asarray(0.3, dtype=jnp.float64),
    }


def _least_squares(p):
    r = _X @ p["W"] + p["b"] + p["s"] - _Y
    return 0.5 * jnp.mean(jnp.sum(r**2, axis=1))


@jax.jit(static_argnums=(0, 1, 3))
def _trajectory(opt, objective, params, steps):
    """Every iterate of `steps` steps of `opt` on `objective`, gradient recomputed each step."""

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(objective)(p), state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    _, path = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return path


def _max_rel_diff(a, b):
    """max over leaves of ‖a − b‖₂ / ‖b‖₂, over the whole trajectory."""
    return max(
        float(jnp.linalg.norm((x - y).ravel()) / jnp.linalg.norm(y.ravel()))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


_DECAY = schedules.exponential(1.0, 0.9, steps_per_epoch=25)  # multiplied by each base lr


def _pairs(lr):
    """(jbp optimizer, the optax optimizer with the same rule), for a float or schedule lr."""
    return {
        "sgd": (optim.sgd(lr), optax.sgd(lr)),
        "momentum": (
            optim.momentum(lr, beta=0.9),
            optax.chain(optax.ema(0.9, debias=False), optax.scale_by_learning_rate(lr)),
        ),
        "momentum-bias-corrected": (
            optim.momentum(lr, beta=0.8, bias_correction=True),
            optax.chain(optax.ema(0.8, debias=True), optax.scale_by_learning_rate(lr)),
        ),
        "rmsprop": (
            optim.rmsprop(lr, beta=0.95, eps=1e-6),
            optax.rmsprop(lr, decay=0.95, eps=1e-6, eps_in_sqrt=False),
        ),
        "adam": (optim.adam(lr, b1=0.9, b2=0.99), optax.adam(lr, b1=0.9, b2=0.99, eps=1e-8)),
    }


# rmsprop's step is ≈ ±lr once g/√S ≈ ±1; a larger lr makes it oscillate near the minimum,
# where g is a cancellation of O(1) terms and rounding (not the rule) decides the path.
_BASE_LR = {"sgd": 0.1, "momentum": 0.1, "momentum-bias-corrected": 0.05, "rmsprop": 1e-3}
_BASE_LR["adam"] = 1e-2


@pytest.mark.parametrize("name", list(_BASE_LR))
@pytest.mark.parametrize("scheduled", [False, True], ids=["float-lr", "schedule"])
def test_matches_optax(name, scheduled):
    lr0 = _BASE_LR[name]
    lr = (lambda step: lr0 * _DECAY(step)) if scheduled else lr0
    ours, theirs = _pairs(lr)[name]
    a = _trajectory(ours, _least_squares, _params0(), 300)
    b = _trajectory(theirs, _least_squares, _params0(), 300)
    assert a["W"].dtype == jnp.float64
    # the optimizer really moved the parameters (so equality is not trivial)
    assert float(_least_squares(jax.tree.map(lambda x: x[-1], a))) < 0.9 * float(
        _least_squares(_params0())
    )
    assert _max_rel_diff(a, b) < 1e-12


def test_adam_with_optax_schedule_matches_optax():
    sched = optax.exponential_decay(1e-2, transition_steps=10, decay_rate=0.5, staircase=True)
    a = _trajectory(optim.adam(sched), _least_squares, _params0(), 200)
    b = _trajectory(optax.adam(sched), _least_squares, _params0(), 200)
    assert _max_rel_diff(a, b) < 1e-12


# --- steps worked out by hand from the recurrences: w₀ = 1, g₁ = 0.5, g₂ = −0.25 ---


def _two_steps(opt):
    w = jnp.asarray(1.0, jnp.float64)
    state = opt.init(w)
    path = []
    for g in (0.5, -0.25):
        updates, state = opt.update(jnp.asarray(g, jnp.float64), state)
        w = optax.apply_updates(w, updates)
        path.append(float(w))
    return path, state


def test_sgd_by_hand():
    path, state = _two_steps(optim.sgd(0.1))
    # w₁ = 1 − 0.1·0.5 = 0.95 ; w₂ = 0.95 + 0.1·0.25 = 0.975
    np.testing.assert_allclose(path, [0.95, 0.975], rtol=1e-14)
    assert int(state.count) == 2


def test_momentum_by_hand():
    path, state = _two_steps(optim.momentum(0.1, beta=0.9))
    # v₁ = 0.1·0.5 = 0.05,              w₁ = 1 − 0.1·0.05 = 0.995
    # v₂ = 0.9·0.05 + 0.1·(−0.25) = 0.02, w₂ = 0.995 − 0.1·0.02 = 0.993
    np.testing.assert_allclose(path, [0.995, 0.993], rtol=1e-14)
    np.testing.assert_allclose(float(state.v), 0.02, rtol=1e-14)


def test_momentum_bias_corrected_by_hand():
    path, _ = _two_steps(optim.momentum(0.1, beta=0.9, bias_correction=True))
    # v̂₁ = 0.05 / (1 − 0.9) = 0.5,   w₁ = 1 − 0.1·0.5 = 0.95
    # v̂₂ = 0.02 / (1 − 0.81) = 2/19, w₂ = 0.95 − 0.1·2/19 = 0.93947368421052...
    np.testing.assert_allclose(path, [0.95, 0.9394736842105263], rtol=1e-14)


def test_rmsprop_by_hand():
    path, state = _two_steps(optim.rmsprop(0.01, beta=0.9, eps=0.0))
    # S₁ = 0.1·0.25 = 0.025,                 w₁ = 1 − 0.01·0.5/√0.025 = 1 − 0.01·√10
    # S₂ = 0.9·0.025 + 0.1·0.0625 = 0.02875, w₂ = w₁ + 0.01·0.25/√0.02875
    np.testing.assert_allclose(path, [0.9683772233983162, 0.9831214190138059], rtol=1e-14)
    np.testing.assert_allclose(float(state.s), 0.02875, rtol=1e-14)


def test_adam_by_hand():
    path, state = _two_steps(optim.adam(0.1, b1=0.9, b2=0.999, eps=1e-8))
    # m₁ = 0.05, v₁ = 0.00025; m̂₁ = 0.5, v̂₁ = 0.25;  w₁ = 1 − 0.1·0.5/(0.5 + 1e-8)
    # m₂ = 0.02, v₂ = 0.00031225; m̂₂ = 0.02/0.19, v̂₂ = 0.00031225/0.001999
    #   w₂ = w₁ − 0.1·m̂₂/(√v̂₂ + 1e-8)
    np.testing.assert_allclose(path, [0.900000002, 0.8733662987078463], rtol=1e-14)
    np.testing.assert_allclose([float(state.m), float(state.v)], [0.02, 0.00031225], rtol=1e-14)


# --- the two momentum conventions are the same method ---


def test_ewma_momentum_equals_heavy_ball_with_scaled_rate():
    """EWMA v = βv + (1−β)g with rate α ≡ heavy ball u = βu + g with rate α(1−β)."""
    alpha, beta = 0.2, 0.9
    a = _trajectory(optim.momentum(alpha, beta=beta), _least_squares, _params0(), 300)
    b = _trajectory(optax.sgd(alpha * (1 - beta), momentum=beta), _least_squares, _params0(), 300)
    assert _max_rel_diff(a, b) < 1e-12
    # ... and not with the unscaled rate
    c = _trajectory(optax.sgd(alpha, momentum=beta), _least_squares, _params0(), 300)
    assert _max_rel_diff(a, c) > 1e-3


# --- convergence from one table ---

_TABLE = {
    "sgd": optim.sgd(1e-3),
    "momentum": optim.momentum(1e-2),
    "momentum-bias-corrected": optim.momentum(1e-2, bias_correction=True),
    "rmsprop": optim.rmsprop(1e-3),
    "adam": optim.adam(1e-2),
}


def _parabola(p):
    return jnp.sum((p["x"] - jnp.array([1.0, -2.0, 3.0])) ** 2)


def _rosenbrock(p):
    x, y = p["x"][0], p["x"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


@pytest.mark.parametrize("name", list(_TABLE))
@pytest.mark.parametrize(
    "objective, x0, minimum",
    [(_parabola, [0.0, 0.0, 0.0], [1.0, -2.0, 3.0]), (_rosenbrock, [0.0, 0.0], [1.0, 1.0])],
    ids=["parabola", "rosenbrock"],
)
def test_converges(name, objective, x0, minimum):
    path = _trajectory(_TABLE[name], objective, {"x": jnp.asarray(x0)}, 20_000)
    np.testing.assert_allclose(path["x"][-1], minimum, atol=1e-2)


@pytest.mark.parametrize("name", list(_TABLE))
@pytest.mark.parametrize("scheduled", [False, True], ids=["float-lr", "schedule"])
def test_jitted_step_does_not_recompile(name, scheduled):
    lr = schedules.staircase(1e-2, 0.5, every_epochs=1, steps_per_epoch=2) if scheduled else 1e-2
    opt = optim.get(name.replace("-bias-corrected", ""), lr)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)  # Python side effect: runs only while tracing
        updates, state = opt.update(jax.grad(_parabola)(params), state, params)
        return optax.apply_updates(params, updates), state

    params = {"x": jnp.zeros(3)}
    state = opt.init(params)
    for _ in range(3):
        params, state = step(params, state)
    assert len(traces) == 1
    assert state.count.dtype == jnp.int32 and int(state.count) == 3


# --- state, learning rate, schedules, chaining ---


@pytest.mark.parametrize("name", optim.NAMES)
def test_state_shape_and_dtypes(name):
    params = {"W": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float64)}
    opt = optim.get(name, 0.1)
    state = opt.init(params)
    assert state.count.dtype == jnp.int32 and state.count.shape == ()
    for moment in state[2:]:
        assert jax.tree.map(lambda x: x.dtype, moment) == jax.tree.map(lambda x: x.dtype, params)
    updates, new_state = opt.update(jax.tree.map(jnp.ones_like, params), state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert jax.tree.map(lambda x: x.dtype, updates) == jax.tree.map(lambda x: x.dtype, params)
    state_types = {"sgd": optim.SgdState, "momentum": optim.MomentumState}
    state_types |= {"rmsprop": optim.RMSpropState, "adam": optim.AdamState}
    assert type(new_state) is state_types[name]


@pytest.mark.parametrize("name", optim.NAMES)
def test_schedule_drives_lr_and_current_lr_reports_it(name):
    sched = schedules.exponential(0.1, 0.5, steps_per_epoch=2)
    opt = optim.get(name, sched)
    params = {"x": jnp.ones(2)}
    state = opt.init(params)
    assert float(optim.current_lr(state)) == pytest.approx(0.1)  # schedule(0) before any step
    step = jax.jit(opt.update)
    for k in range(7):
        _, state = step({"x": jnp.ones(2)}, state)
        # the lr of step k+1 is schedule(k): epoch k // 2
        assert float(optim.current_lr(state)) == pytest.approx(0.1 * 0.5 ** (k // 2), rel=1e-12)


def test_sgd_step_uses_the_scheduled_lr():
    opt = optim.sgd(schedules.piecewise([1, 2], [1.0, 0.5, 0.25]))
    w, state = jnp.asarray(0.0), opt.init(jnp.asarray(0.0))
    for expected in (-1.0, -1.5, -1.75, -2.0):
        updates, state = opt.update(jnp.asarray(1.0), state)
        w = optax.apply_updates(w, updates)
        assert float(w) == pytest.approx(expected)


def test_float_lr_reported():
    state = optim.adam(3e-4).init({"x": jnp.ones(2)})
    assert float(optim.current_lr(state)) == pytest.approx(3e-4)


def test_chain_with_optax_and_current_lr():
    opt = optax.chain(optax.clip_by_global_norm(1.0), optim.adam(1e-3))
    path = _trajectory(opt, _least_squares, _params0(), 50)
    assert float(_least_squares(jax.tree.map(lambda x: x[-1], path))) < float(
        _least_squares(_params0())
    )
    ref = _trajectory(
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        _least_squares,
        _params0(),
        50,
    )
    assert _max_rel_diff(path, ref) < 1e-12
    state = opt.init(_params0())
    assert float(optim.current_lr(state)) == pytest.approx(1e-3)
    assert float(optim.current_lr({"inner": [state]})) == pytest.approx(1e-3)


def test_current_lr_without_lr_field():
    with pytest.raises(ValueError, match="no 'lr' field"):
        optim.current_lr(optax.adam(1e-3).init({"x": jnp.ones(2)}))


# --- hyperparameters refused when the optimizer is built ---

_BAD = [
    (lambda: optim.sgd(-0.1), r"lr must be > 0, got lr=-0.1"),
    (lambda: optim.sgd(0.0), r"lr must be > 0, got lr=0.0"),
    (lambda: optim.adam(float("inf")), r"lr must be finite, got lr=inf"),
    (lambda: optim.adam(float("nan")), r"lr must be > 0, got lr=nan"),
    (lambda: optim.sgd("fast"), r"lr must be a number > 0 or a schedule, got lr='fast'"),
    (lambda: optim.momentum(0.1, beta=1.0), r"beta must be in \[0, 1\), got beta=1.0"),
    (lambda: optim.momentum(0.1, beta=-0.1), r"beta must be in \[0, 1\), got beta=-0.1"),
    (lambda: optim.rmsprop(0.1, beta=1.5), r"beta must be in \[0, 1\), got beta=1.5"),
    (lambda: optim.rmsprop(0.1, eps=-1e-8), r"eps must be >= 0 and finite, got eps=-1e-08"),
    (lambda: optim.adam(0.1, b1=1.0), r"b1 must be in \[0, 1\), got b1=1.0"),
    (lambda: optim.adam(0.1, b2=1.0), r"b2 must be in \[0, 1\), got b2=1.0"),
    (lambda: optim.adam(0.1, eps=-1.0), r"eps must be >= 0 and finite, got eps=-1.0"),
    (lambda: optim.get("adamw", 0.1), r"unknown optimizer 'adamw'; valid names: sgd, momentum"),
    (lambda: optim.get("sgd", 0.1, beta=0.9), r"'sgd' takes no hyperparameter 'beta'"),
]


@pytest.mark.parametrize("build, message", _BAD, ids=[m for _, m in _BAD])
def test_bad_hyperparameters_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_get_builds_each():
    assert optim.NAMES == ("sgd", "momentum", "rmsprop", "adam")
    state = optim.get("Adam", 0.1, b1=0.5).init(jnp.ones(2))
    assert isinstance(state, optim.AdamState)
    assert isinstance(optim.get("momentum", 0.1, beta=0.5).init(1.0), optim.MomentumState)
