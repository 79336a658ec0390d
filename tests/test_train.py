"""The training engine: batch regimes, masking, manual ≡ autodiff, determinism, divergence."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp import train
from jbp.data import DataError, Dataset
from jbp.gradient_check import rel_diff


@pytest.fixture(scope="module")
def small():
    ds = jbp.data.load("digits")
    return Dataset(ds.x_train[:203], ds.y_train[:203], ds.x_test[:100], ds.y_test[:100])


NET = jbp.MLP((64, 16, 10), "tanh", "softmax", "cross_entropy")


@pytest.mark.parametrize("batch_size", [1, 37, 64, None])
def test_every_batch_regime_lowers_the_loss(small, batch_size):
    opt = jbp.optim.sgd(0.05 if batch_size == 1 else 0.5)
    state, hist = jbp.fit(
        NET, opt, small, batch_size=batch_size, epochs=3, key=jax.random.key(0), dtype=jnp.float64
    )
    nb = 1 if batch_size is None else -(-203 // batch_size)
    assert int(state.step) == 3 * nb and int(state.epoch) == 3
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["test_loss"] < float(NET.loss(NET.init(jax.random.key(0)), small[2], small[3]))
    assert set(hist[0]) >= {
        "epoch",
        "step",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "lr",
        "seconds",
    }


def test_shuffled_batches_cover_every_example_once():
    x = jnp.arange(10.0)[:, None]
    y = jnp.arange(10)
    xb, yb, mb = train.shuffled_batches(jax.random.key(3), x, y, 4)
    assert xb.shape == (3, 4, 1) and mb.shape == (3, 4)
    assert float(mb.sum()) == 10 and float(mb[-1].sum()) == 2
    seen = np.asarray(yb)[np.asarray(mb) > 0]
    assert sorted(seen.tolist()) == list(range(10))


def test_masked_last_batch_gives_the_unpadded_gradient(small):
    params = NET.init(jax.random.key(1), jnp.float64)
    x, y = jnp.asarray(small[0][:203], jnp.float64), jnp.asarray(small[1][:203])
    xb, yb, mb = train.shuffled_batches(jax.random.key(0), x, y, 64)
    last = int(mb[-1].sum())
    assert last == 203 - 3 * 64
    _, g_masked = NET.loss_and_grad(params, xb[-1], yb[-1], mb[-1])
    _, g_plain = NET.loss_and_grad(params, xb[-1][:last], yb[-1][:last])
    for a, b in zip(jax.tree.leaves(g_masked), jax.tree.leaves(g_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-16)


def test_manual_and_autodiff_backward_give_the_same_parameters(small):
    kw = dict(batch_size=37, epochs=1, key=jax.random.key(0), dtype=jnp.float64)
    s1, _ = jbp.fit(NET, jbp.optim.adam(1e-2), small, backward="manual", **kw)
    s2, _ = jbp.fit(NET, jbp.optim.adam(1e-2), small, backward="autodiff", **kw)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params), strict=True):
        assert rel_diff(a, b) < 1e-10


def test_same_seed_same_hash_other_seed_other_hash(small):
    def run(seed):
        s, _ = jbp.fit(
            NET, jbp.optim.adam(1e-2), small, batch_size=50, epochs=2, key=jax.random.key(seed)
        )
        return jbp.params_sha256(s.params)

    h0 = run(0)
    assert h0 == run(0) and len(h0) == 64
    assert h0 != run(1)


def test_resuming_a_state_equals_one_run(small):
    sched = jbp.schedules.exponential(0.1, 0.9, steps_per_epoch=6)
    kw = dict(batch_size=37, key=jax.random.key(0))
    full, hist_full = jbp.fit(NET, jbp.optim.momentum(sched), small, epochs=4, **kw)
    half, _ = jbp.fit(NET, jbp.optim.momentum(sched), small, epochs=2, **kw)
    rest, hist_rest = jbp.fit(NET, jbp.optim.momentum(sched), small, epochs=4, state=half, **kw)
    assert jbp.params_sha256(full.params) == jbp.params_sha256(rest.params)
    assert [h["epoch"] for h in hist_rest] == [3, 4]
    assert hist_rest[-1]["lr"] == pytest.approx(hist_full[-1]["lr"])


def test_lr_is_logged_from_the_schedule(small):
    sched = jbp.schedules.staircase(0.1, 0.5, every_epochs=1, steps_per_epoch=4)
    _, hist = jbp.fit(
        NET, jbp.optim.sgd(sched), small, batch_size=64, epochs=3, key=jax.random.key(0)
    )
    # the lr of each epoch's last step: epochs 0, 1, 2 -> 0.1, 0.05, 0.025
    assert [h["lr"] for h in hist] == pytest.approx([0.1, 0.05, 0.025])


def test_divergence_is_never_silent(small):
    with pytest.raises(
        train.DivergenceError, match=r"epoch 1, step \d+.*smaller learning rate"
    ) as e:
        relu = jbp.MLP((64, 16, 10), "relu", "softmax", "cross_entropy")
        jbp.fit(relu, jbp.optim.sgd(1e30), small, batch_size=16, epochs=2, key=jax.random.key(0))
    assert jax.tree.all(
        jax.tree.map(lambda a: bool(jnp.all(jnp.isfinite(a))), e.value.state.params)
    )
    assert e.value.step >= 1


def test_early_stopping_keeps_the_best_parameters(small):
    best = {}

    def cb(state, rec):
        if rec["epoch"] == 1 or rec["test_loss"] < best["loss"]:
            best.update(loss=rec["test_loss"], sha=jbp.params_sha256(state.params))

    # a huge lr makes the test loss bounce, so patience triggers early
    state, hist = jbp.fit(
        NET,
        jbp.optim.sgd(3.0),
        small,
        batch_size=8,
        epochs=40,
        key=jax.random.key(0),
        patience=2,
        callback=cb,
    )
    assert hist[-1].get("early_stopped") and len(hist) < 40
    assert jbp.params_sha256(state.params) == best["sha"]


def test_callback_can_stop_training(small):
    _, hist = jbp.fit(
        NET,
        jbp.optim.sgd(0.1),
        small,
        batch_size=64,
        epochs=10,
        key=jax.random.key(0),
        callback=lambda s, r: r["epoch"] == 2,
    )
    assert len(hist) == 2


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0), "batch_size must be a positive integer or None"),
        (dict(batch_size=2.5), "batch_size must be a positive integer"),
        (dict(epochs=0), "epochs must be a positive integer, got epochs=0"),
        (dict(backward="numeric"), "backward must be one of manual, autodiff"),
        (dict(patience=0), "patience must be a positive integer"),
    ],
)
def test_bad_arguments(small, kwargs, match):
    args = dict(batch_size=64, epochs=1, key=jax.random.key(0))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        jbp.fit(NET, jbp.optim.sgd(0.1), small, **args)


def test_data_that_does_not_fit_the_network(small):
    net = jbp.MLP((32, 10, 10))
    with pytest.raises(ValueError, match=r"train inputs have shape \(203, 64\).*input width is 32"):
        jbp.fit(net, jbp.optim.sgd(0.1), small, epochs=1, key=jax.random.key(0))
    net5 = jbp.MLP((64, 10, 5))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\]"):
        jbp.fit(net5, jbp.optim.sgd(0.1), small, epochs=1, key=jax.random.key(0))


def _fashion():
    try:
        return jbp.data.load("fashion-mnist")
    except DataError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST must be installed in CI: {e}")
        pytest.skip(str(e))


def test_fashion_mnist_one_epoch_reaches_80_percent():
    ds = _fashion()
    net = jbp.MLP((784, 256, 10), "relu", "softmax", "cross_entropy")
    _, hist = jbp.fit(
        net, jbp.optim.adam(1e-3), ds, batch_size=128, epochs=1, key=jax.random.key(0)
    )
    assert hist[0]["test_accuracy"] >= 0.80


@pytest.mark.parametrize("batch_size", [40, 64, 8])  # full batches, a ragged last one, tiny
def test_fit_equals_a_python_loop_of_textbook_steps(small, batch_size, monkeypatch):
    """w ← w − η·∂C/∂w over the engine's own shuffle: the compiled epoch is exactly that."""
    data = Dataset(small[0][:200], small[1][:200], small[2], small[3])
    kw = dict(batch_size=batch_size, epochs=2, key=jax.random.key(0), dtype=jnp.float64)
    state, _ = jbp.fit(NET, jbp.optim.sgd(0.1), data, **kw)
    # the other gather strategy (pre-gathered copy vs per-step gather) gives the same result
    flip = 10**9 if batch_size >= train.GATHER_PER_STEP_FROM else 1
    monkeypatch.setattr(train, "GATHER_PER_STEP_FROM", flip)
    state2, _ = jbp.fit(NET, jbp.optim.sgd(0.1), data, **kw)
    ref = train.init_state(NET, jbp.optim.sgd(0.1), jax.random.key(0), jnp.float64)
    params, key = ref.params, ref.key
    x, y = jnp.asarray(data[0], jnp.float64), jnp.asarray(data[1])
    for _ in range(2):
        key, sub = jax.random.split(jax.random.wrap_key_data(key))
        key = jax.random.key_data(key)
        idx, mask = train.shuffled_indices(sub, 200, batch_size, jnp.float64)
        for bi, bm in zip(idx, mask, strict=True):
            keep = np.asarray(bm) > 0
            _, g = NET.loss_and_grad(params, x[bi][keep], y[bi][keep])
            params = jax.tree.map(lambda w, d: w - 0.1 * d, params, g)
    for a, b, c in zip(*map(jax.tree.leaves, (state.params, state2.params, params)), strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(b, c, rtol=1e-11, atol=1e-13)


def test_an_overflow_in_the_last_update_is_caught(small, monkeypatch):
    """A weight gradient that overflows alone (finite loss and bias gradients) is caught at
    the epoch's end: nothing non-finite is returned as the state."""
    real = NET.train_grad

    def poisoned(params, mstate, x, y, mask=None, **kw):
        loss, g, mstate = real(params, mstate, x, y, mask, **kw)
        g[0]["W"] = g[0]["W"].at[0, 0].set(jnp.inf)
        return loss, g, mstate

    monkeypatch.setattr(NET.__class__, "train_grad", lambda self, *a, **kw: poisoned(*a, **kw))
    with pytest.raises(train.DivergenceError) as e:
        jbp.fit(NET, jbp.optim.sgd(0.1), small, batch_size=None, epochs=1, key=jax.random.key(0))
    assert e.value.epoch == 1
    assert jax.tree.all(
        jax.tree.map(lambda a: bool(jnp.all(jnp.isfinite(a))), e.value.state.params)
    )


# ------------------------------------------------------------- divergence: blow-up
def _max_ratio(cfg, subset=None):
    """Train a preset recipe with the default threshold; its max train loss ÷ initial loss."""
    from jbp import config, recipe

    r = recipe.build(config.RunConfig(**cfg))
    ds = r.data
    if subset:
        ds = Dataset(ds.x_train[:subset], ds.y_train[:subset], ds.x_test[: subset // 2],
                     ds.y_test[: subset // 2])  # fmt: skip
    state0 = train.init_state(r.model, r.optimizer, jax.random.key(0), r.dtype)
    x_test, y_test = train.device_data(ds, r.dtype)[2:]
    loss0 = train.initial_loss(r.model, state0, x_test, y_test)
    _, hist = jbp.fit(r.model, r.optimizer, ds, batch_size=r.batch_size, epochs=r.epochs,
                      key=jax.random.key(0), dtype=r.dtype)  # fmt: skip
    return max(h["train_loss"] for h in hist) / loss0


@pytest.mark.parametrize(
    "cfg,subset",
    [
        (dict(data="digits"), None),  # the whole preset: 30 epochs
        (dict(data="moons"), None),  # 1000 epochs
        (dict(data="digits", model="cnn", epochs=2), None),  # its first epochs
        (dict(data="fashion-mnist", epochs=2), 2000),
    ],
    ids=["digits", "moons", "digits-cnn", "fashion-mnist-subset"],
)
def test_no_preset_recipe_comes_near_the_default_threshold(cfg, subset):
    if cfg["data"] == "fashion-mnist":
        _fashion()
    ratio = _max_ratio(cfg, subset)
    assert ratio < train.DIVERGENCE_THRESHOLD / 100  # measured: ≤ 1.0, two orders of margin


_LOWERINGS = []  # (event name) of every program lowered while _COUNTING


def _count_lowerings(event, duration, **kw):
    if _COUNTING and event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
        _LOWERINGS.append(event)


_COUNTING = False


def test_the_initial_loss_is_one_compiled_program(small):
    """Start-up: evaluated op by op, the initial loss lowered about twenty small programs
    (one per operation of the forward and the loss), ~0.4 s of every run's start."""
    global _COUNTING
    from jax import monitoring

    net = jbp.MLP((64, 30, 10), "relu", "softmax", "cross_entropy")
    state = train.init_state(net, jbp.optim.adam(1e-3), jax.random.key(0), jnp.float64)
    x_test, y_test = train.device_data(small, jnp.float64)[2:]
    monitoring.register_event_duration_secs_listener(_count_lowerings)
    _COUNTING, _LOWERINGS[:] = True, []
    try:
        loss = train.initial_loss(net, state, x_test, y_test)
    finally:
        _COUNTING = False
    assert len(_LOWERINGS) == 1
    assert loss == pytest.approx(
        float(net.evaluate(state.params, state.model_state, x_test, y_test)[0])
    )


def test_a_blown_up_loss_is_divergence_and_the_threshold_can_be_off(small):
    kw = dict(batch_size=64, epochs=2, key=jax.random.key(0))
    net = jbp.MLP((64, 30, 10), "sigmoid", "softmax", "cross_entropy")
    with pytest.raises(train.DivergenceError, match=r"train loss of epoch 1 is .* more than "
                       r"1000 × the initial loss .*smaller learning rate") as e:  # fmt: skip
        jbp.fit(net, jbp.optim.sgd(1e9), small, **kw)
    assert e.value.kind == "blow-up" and e.value.loss > 1000 * e.value.reference
    assert int(e.value.state.epoch) == 0  # the last good state: nothing of the epoch kept
    _, hist = jbp.fit(net, jbp.optim.sgd(1e9), small, divergence_threshold=None, **kw)
    assert len(hist) == 2 and all(np.isfinite(h["train_loss"]) for h in hist)


def test_the_blow_up_rule():
    from jbp import stopping

    state = train.TrainState((), (), jnp.asarray(5), jnp.asarray(1), None)
    with pytest.raises(train.DivergenceError, match=r"epoch 2 is 3.1, more than 1.5 × the "
                       r"initial loss 2 .*the parameters of epoch 1 are kept") as e:  # fmt: skip
        stopping.check_blow_up(2, 10, state, 3.1, 2.0, 1.5)
    assert (e.value.epoch, e.value.step, e.value.state) == (2, 10, state)
    stopping.check_blow_up(2, 10, state, 2.9, 2.0, 1.5)  # under: nothing
    stopping.check_blow_up(2, 10, state, 1e30, 2.0, None)  # off
    for reference in (-1.0, 0.0, float("inf"), float("nan")):  # no meaningful multiple: off
        stopping.check_blow_up(2, 10, state, 1e30, reference, 1.5)


@pytest.mark.parametrize("bad", [0.5, 0, float("inf"), float("nan"), True, "1e3"])
def test_the_threshold_is_checked(small, bad):
    with pytest.raises(ValueError, match="divergence_threshold must be a finite number >= 1"):
        jbp.fit(NET, jbp.optim.sgd(0.1), small, epochs=1, key=jax.random.key(0),
                divergence_threshold=bad)  # fmt: skip


# ------------------------------------------------------------------ data errors
@pytest.mark.parametrize("split", ["train", "test"])
def test_nan_in_the_data_is_a_data_error_not_divergence(small, split):
    x = np.array(small[0] if split == "train" else small[2])
    x[7, 3] = np.nan
    ds = small._replace(**{"x_train" if split == "train" else "x_test": x})
    with pytest.raises(DataError, match=rf"the {split} inputs hold 1 non-finite value.*example 7"):
        jbp.fit(NET, jbp.optim.sgd(0.1), ds, epochs=1, key=jax.random.key(0))


def test_labels_that_skip_classes_are_warned_about(small):
    from jbp.data_checks import DataWarning

    y = np.where(small[1] == 3, 4, small[1])  # class 3 only in the test split now
    with pytest.warns(DataWarning, match=r"class\(es\) 3 have no training example"):
        jbp.fit(NET, jbp.optim.sgd(0.1), small._replace(y_train=y), epochs=1,
                key=jax.random.key(0))  # fmt: skip


# ------------------------------------------------- early stopping, stopped and resumed
def test_early_stopping_resumed_from_its_best_stops_like_one_run(small):
    kw = dict(batch_size=8, epochs=40, key=jax.random.key(0))
    full, hist = jbp.fit(NET, jbp.optim.sgd(3.0), small, patience=2, **kw)
    stop, best = hist[-1]["epoch"], hist[-1]["best_epoch"]
    assert hist[-1]["early_stopped"] and stop == best + 2
    early = train.EarlyStopping(2)
    half, _ = jbp.fit(NET, jbp.optim.sgd(3.0), small, early_stopping=early,
                      callback=lambda s, r: r["epoch"] == stop - 1, **kw)  # fmt: skip
    saved = early.best()
    assert (saved.epoch, int(half.epoch)) == (best, stop - 1)
    resumed = train.EarlyStopping(2, best=saved)
    rest, hist2 = jbp.fit(NET, jbp.optim.sgd(3.0), small, state=half, early_stopping=resumed,
                          **kw)  # fmt: skip
    assert [h["epoch"] for h in hist2] == [stop] and hist2[-1]["best_epoch"] == best
    assert jbp.params_sha256(rest.params) == jbp.params_sha256(full.params)
    # a run resumed once it had stopped returns its best at once, training nothing
    again, hist3 = jbp.fit(NET, jbp.optim.sgd(3.0), small, state=rest._replace(
        params=half.params), early_stopping=train.EarlyStopping(2, best=resumed.best()), **kw)  # fmt: skip
    assert hist3 == [] and jbp.params_sha256(again.params) == jbp.params_sha256(full.params)
