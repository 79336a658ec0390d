"""check_layer / check_model: correct layers pass, planted bugs are caught and named.

The layers here are self-contained (frozen dataclasses with init/forward/backward) so the
checker is tested independently of ``jbp.layers``.
"""

import dataclasses
import importlib
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jbp.check import check_grid, check_layer, check_model, load_target, rel_diff, run_cli


# ----------------------------------------------------------------------------- layers
@dataclasses.dataclass(frozen=True)
class Dense:
    """y = x·W + b. ``bias_factor`` ≠ 1 plants a wrong gradient on the small leaf b."""

    n_out: int
    bias_factor: float = 1.0
    batch_coupled = False
    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        (n_in,) = in_shape
        w = jax.random.normal(key, (n_in, self.n_out), dtype) / np.sqrt(n_in)
        return {"W": w, "b": jnp.zeros(self.n_out, dtype)}, (), (self.n_out,)

    def forward(self, params, state, x, *, train=False, key=None):
        return x @ params["W"] + params["b"], x, state

    def backward(self, params, cache, dy):
        return {"W": cache.T @ dy, "b": dy.sum(0) * self.bias_factor}, dy @ params["W"].T


def make_dense():
    """A zero-argument factory (for load_target)."""
    return Dense(3)


@dataclasses.dataclass(frozen=True)
class Tanh:
    batch_coupled = False
    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        y = jnp.tanh(x)
        return y, y, state

    def backward(self, params, cache, dy):
        return (), dy * (1 - cache * cache)


@dataclasses.dataclass(frozen=True)
class Sum2:
    """Two inputs, one output: y = a + b."""

    batch_coupled = False
    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        assert in_shape[0] == in_shape[1]
        return (), (), in_shape[0]

    def forward(self, params, state, x, *, train=False, key=None):
        a, b = x
        return a + b * b, b, state

    def backward(self, params, cache, dy):
        return (), (dy, 2 * cache * dy)


@dataclasses.dataclass(frozen=True)
class Dropout:
    rate: float = 0.5
    batch_coupled = False
    stochastic = True

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        keep = jax.random.bernoulli(key, 1 - self.rate, x.shape).astype(x.dtype)
        keep = keep / (1 - self.rate) if train else jnp.ones_like(x)
        return x * keep, keep, state

    def backward(self, params, cache, dy):
        return (), dy * cache


@dataclasses.dataclass(frozen=True)
class RunningScale:
    """y = s ⊙ x, with an EWMA of the batch mean as state."""

    batch_coupled = False
    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        return {"s": jnp.ones(in_shape, dtype)}, {"ema": jnp.zeros(in_shape, dtype)}, in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        new = {"ema": 0.9 * state["ema"] + 0.1 * x.mean(0)} if train else state
        return x * params["s"], x, new

    def backward(self, params, cache, dy):
        return {"s": (dy * cache).sum(0)}, dy * params["s"]


@dataclasses.dataclass(frozen=True)
class BatchNorm:
    """Training-mode batch normalisation (biased variance)."""

    coupled: bool = True

    @property
    def batch_coupled(self):
        return self.coupled

    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        return (
            {"gamma": jnp.ones(in_shape, dtype), "beta": jnp.zeros(in_shape, dtype)},
            (),
            in_shape,
        )

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        mu, var = x.mean(0), x.var(0)
        inv = 1 / jnp.sqrt(var + 1e-5)
        xhat = (x - mu) * inv
        return params["gamma"] * xhat + params["beta"], (xhat, inv), state

    def backward(self, params, cache, dy):
        xhat, inv = cache
        g = dy * params["gamma"]
        dx = inv * (g - g.mean(0) - xhat * (g * xhat).mean(0))
        return {"gamma": (dy * xhat).sum(0), "beta": dy.sum(0)}, dx


@dataclasses.dataclass(frozen=True)
class Relu:
    """relu(x) = max(x, 0); backward takes relu'(0) = 0 (jax.vjp of maximum gives ½)."""

    batch_coupled = False
    stochastic = False

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        return jnp.maximum(x, 0), x, state

    def backward(self, params, cache, dy):
        return (), jnp.where(cache > 0, dy, 0)


@dataclasses.dataclass(frozen=True)
class Conv1D:
    """1-D single-channel convolution with stride and zero padding, as patches·w.

    ``buggy=True``: the backward ignores stride and padding — right for stride 1, padding 0.
    """

    k: int = 3
    stride: int = 1
    padding: int = 0
    buggy: bool = False
    batch_coupled = False
    stochastic = False

    def _n(self, length):
        return (length + 2 * self.padding - self.k) // self.stride + 1

    def _idx(self, n, stride):
        return np.arange(n)[:, None] * stride + np.arange(self.k)[None, :]

    def init(self, key, in_shape, dtype=jnp.float32):
        (length,) = in_shape
        return {"w": jax.random.normal(key, (self.k,), dtype)}, (), (self._n(length),)

    def forward(self, params, state, x, *, train=False, key=None):
        xp = jnp.pad(x, ((0, 0), (self.padding, self.padding)))
        patches = xp[:, self._idx(self._n(x.shape[1]), self.stride)]
        return patches @ params["w"], xp, state

    def backward(self, params, cache, dy):
        xp = cache
        stride, pad = (1, 0) if self.buggy else (self.stride, self.padding)
        idx = self._idx(dy.shape[1], stride)
        dw = jnp.einsum("bn,bnk->k", dy, xp[:, idx])
        dxp = jnp.zeros_like(xp).at[:, idx].add(dy[:, :, None] * params["w"])
        length = xp.shape[1] - 2 * self.padding
        return {"w": dw}, dxp[:, pad : pad + length]


@dataclasses.dataclass(frozen=True)
class IgnoresDy(Dense):
    """Planted bug: the gradient for dy = ones, whatever dy is."""

    def backward(self, params, cache, dy):
        return super().backward(params, cache, jnp.ones_like(dy))


def _noise(v):
    rng = np.random.default_rng()  # fresh, unseeded: differs on every call
    return (v * (1 + 1e-13 * rng.standard_normal(v.shape))).astype(v.dtype)


@dataclasses.dataclass(frozen=True)
class Nondeterministic(Dense):
    """Planted bug: each leaf is multiplied by 1 + 1e-13·N(0, 1) from a fresh numpy RNG."""

    def backward(self, params, cache, dy):
        grads = super().backward(params, cache, dy)
        return jax.tree.map(
            lambda v: jax.pure_callback(
                _noise, jax.ShapeDtypeStruct(v.shape, v.dtype), v, vmap_method="sequential"
            ),
            grads,
        )


@dataclasses.dataclass(frozen=True)
class WrongShape(Dense):
    """Planted bug: db has one entry too many."""

    def backward(self, params, cache, dy):
        g, dx = super().backward(params, cache, dy)
        return {"W": g["W"], "b": jnp.concatenate([g["b"], jnp.zeros(1, dy.dtype)])}, dx


@dataclasses.dataclass(frozen=True)
class MissingLeaf(Dense):
    """Planted bug: no gradient for b."""

    def backward(self, params, cache, dy):
        g, dx = super().backward(params, cache, dy)
        return {"W": g["W"]}, dx


@dataclasses.dataclass(frozen=True)
class Raises(Dense):
    def backward(self, params, cache, dy):
        return {"W": cache @ dy.T, "b": dy.sum(0)}, dy  # mismatched matmul


# ----------------------------------------------------------------------------- a model
class TinyModel:
    """tanh hidden layer, softmax cross-entropy averaged over the (masked) batch.

    ``bug="b1"`` scales the hand-written gradient of b1 by 1.01.
    """

    in_shape = (3,)
    n_out = 4

    def __init__(self, bug=None):
        self.bug = bug

    def initialize(self, key, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        params = {
            "W1": jax.random.normal(k1, (3, 5), dtype) / np.sqrt(3),
            "b1": jnp.zeros(5, dtype),
            "W2": jax.random.normal(k2, (5, 4), dtype) / np.sqrt(5),
            "b2": jnp.zeros(4, dtype),
        }
        return params, ()

    def _weights(self, x, mask):
        m = jnp.ones(x.shape[0], x.dtype) if mask is None else mask
        return m / m.sum()

    def loss(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        h = jnp.tanh(x @ params["W1"] + params["b1"])
        z = h @ params["W2"] + params["b2"]
        nll = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0]
        return jnp.sum(nll * self._weights(x, mask))

    def loss_and_grad(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        h = jnp.tanh(x @ params["W1"] + params["b1"])
        z = h @ params["W2"] + params["b2"]
        w = self._weights(x, mask)
        loss = jnp.sum(-jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0] * w)
        dz = (jax.nn.softmax(z) - jax.nn.one_hot(y, 4, dtype=z.dtype)) * w[:, None]
        dh = dz @ params["W2"].T * (1 - h * h)
        db1 = dh.sum(0) * (1.01 if self.bug == "b1" else 1.0)
        grads = {"W1": x.T @ dh, "b1": db1, "W2": h.T @ dz, "b2": dz.sum(0)}
        return loss, grads


def _rows(report):
    return {r.name: r for r in report.rows}


# ----------------------------------------------------------------------------- correct layers
class BackwardVariantsTest(chex.TestCase):
    """The test layers' backwards equal jax.vjp with and without jit (what check_layer assumes)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("dense", Dense(3), (4,)),
        ("tanh", Tanh(), (4,)),
        ("sum2", Sum2(), ((4,), (4,))),
        ("batchnorm", BatchNorm(), (4,)),
    )
    def test_backward_equals_vjp(self, layer, in_shape):
        rng = np.random.default_rng(0)
        params, state, _ = layer.init(jax.random.PRNGKey(0), in_shape, jnp.float64)
        if isinstance(in_shape[0], tuple):
            x = tuple(jnp.asarray(rng.standard_normal((4, *s))) for s in in_shape)
        else:
            x = jnp.asarray(rng.standard_normal((4, *in_shape)))
        y, cache, _ = layer.forward(params, state, x, train=True)
        dy = jnp.asarray(rng.standard_normal(y.shape))
        got = self.variant(layer.backward)(params, cache, dy)
        _, vjp = jax.vjp(lambda p, xx: layer.forward(p, state, xx, train=True)[0], params, x)
        chex.assert_trees_all_close(got, vjp(dy), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "layer,in_shape",
    [
        (Dense(3), (4,)),
        (Tanh(), (2, 3)),
        (Sum2(), ((4,), (4,))),
        (Dropout(0.3), (6,)),
        (RunningScale(), (5,)),
        (BatchNorm(), (3,)),
    ],
    ids=["dense", "tanh", "sum2", "dropout", "stateful", "batchnorm"],
)
def test_correct_layers_pass(layer, in_shape):
    rep = check_layer(layer, in_shape)
    assert rep.ok, rep.table()
    assert rep.kinks_redrawn == 0 and rep.dtype == "float64"
    assert all(r.rel_vjp < 1e-10 and r.rel_fd < 1e-7 for r in rep.rows)
    flags = ("batch_independent", "stochastic_flag")
    assert all(c.ok for n, c in rep.checks.items() if n.removesuffix(" (masked)") not in flags)
    assert rep.checks["stochastic_flag"].ok is (None if layer.stochastic else True)
    coupled_or_random = layer.batch_coupled or layer.stochastic
    assert rep.checks["batch_independent"].ok is (None if coupled_or_random else True)
    assert "PASS" in str(rep)
    json.dumps(rep.to_dict())


def test_rows_name_every_leaf_of_params_and_x():
    rep = check_layer(Dense(3), (4,))
    assert [(r.name, r.kind, r.shape) for r in rep.rows] == [
        ("W", "param", (4, 3)),
        ("b", "param", (3,)),
        ("x", "input", (4, 4)),
    ]
    rep = check_layer(Sum2(), ((2,), (2,)), batch=3)
    assert [(r.name, r.kind, r.shape) for r in rep.rows] == [
        ("x[0]", "input", (3, 2)),
        ("x[1]", "input", (3, 2)),
    ]


def test_float64_without_the_global_flag():
    with jax.enable_x64(False):
        assert jnp.ones(1).dtype == jnp.float32
        rep = check_layer(Tanh(), (3,))
    assert rep.ok and rep.dtype == "float64", rep.table()


def test_stateful_layer_updates_its_state():
    layer = RunningScale()
    params, state, _ = layer.init(jax.random.PRNGKey(0), (2,), jnp.float64)
    _, _, new = layer.forward(params, state, jnp.ones((3, 2)), train=True)
    assert not np.allclose(new["ema"], state["ema"])
    assert check_layer(layer, (2,), state={"ema": jnp.full((2,), 3.0)}).ok


def test_params_are_moved_away_from_init():
    # BatchNorm at init has gamma = 1, beta = 0: a backward that forgets gamma passes there.
    @dataclasses.dataclass(frozen=True)
    class ForgetsGamma(BatchNorm):
        def backward(self, params, cache, dy):
            g, _ = super().backward(params, cache, dy)
            xhat, inv = cache
            return g, inv * (dy - dy.mean(0) - xhat * (dy * xhat).mean(0))

    layer = ForgetsGamma()
    p0, _, _ = layer.init(jax.random.PRNGKey(0), (3,), jnp.float64)
    assert check_layer(layer, (3,), params=p0).ok  # at init the bug is invisible
    rep = check_layer(layer, (3,))
    assert not rep.ok and not _rows(rep)["x"].ok


def test_kink_is_redrawn_and_counted():
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6), jnp.float64).at[:, ::2].set(0.0)
    rep = check_layer(Relu(), (6,), x=x)
    assert rep.ok, rep.table()
    assert rep.kinks_redrawn >= 1 and "kink" in rep.notes[0]
    # without exact zeros there is nothing to redraw
    assert check_layer(Relu(), (6,)).kinks_redrawn == 0
    # redraws=0: the kink is reported as a failure
    rep0 = check_layer(Relu(), (6,), x=x, redraws=0)
    assert not rep0.ok and rep0.kinks_redrawn == 0 and "not redrawn" in rep0.notes[0]


# ----------------------------------------------------------------------------- planted bugs
def test_bug1_small_leaf_beside_a_large_one():
    """db off by 0.01 % beside a 50×40 W fed raw pixel values (0–255)."""
    layer = Dense(40, bias_factor=1.0001)
    key = jax.random.PRNGKey(0)
    x = 255.0 * jax.random.uniform(jax.random.PRNGKey(1), (4, 50), jnp.float64)
    rep = check_layer(layer, (50,), x=x, key=key)
    rows = _rows(rep)
    assert not rep.ok and rep.failures == ["b"], rep.table()
    assert rows["b"].rel_fd > 1e-5 and rows["b"].rel_vjp > 1e-5
    assert rows["W"].ok and rows["x"].ok

    # one random direction over the concatenation of all leaves (check_grads style), compared
    # with the exact directional derivative (jax.jvp): the best such a check can do
    params = {"W": 1.5 * layer.init(key, (50,), jnp.float64)[0]["W"], "b": jnp.linspace(-1, 1, 40)}
    y, cache, _ = layer.forward(params, (), x)
    dy = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape))
    manual = jax.tree.leaves(layer.backward(params, cache, dy))

    @jax.jit
    def directional(u):
        phi = lambda p, xx: jnp.vdot(dy, layer.forward(p, (), xx)[0])  # noqa: E731
        exact = jax.jvp(phi, (params, x), u)[1]
        mine = sum(jnp.vdot(g, v) for g, v in zip(manual, jax.tree.leaves(u), strict=True))
        return jnp.abs(mine - exact) / (jnp.abs(mine) + jnp.abs(exact))

    rng = np.random.default_rng(0)
    rels = []
    for _ in range(20):
        u = jax.tree.map(lambda v: rng.standard_normal(v.shape), (params, x))
        norm = np.sqrt(sum(np.sum(v * v) for v in jax.tree.leaves(u)))
        rels.append(float(directional(jax.tree.map(lambda v, n=norm: v / n, u))))
    assert max(rels) < 1e-5, rels  # a single direction at tolerance 1e-5 passes the bug


def test_bug2_backward_right_for_one_stride_and_padding_only():
    results = check_grid(
        lambda **cfg: Conv1D(k=3, buggy=True, **cfg),
        {"stride": [1, 2], "padding": [0, 1]},
        (9,),
        batch=2,
        cotangents=2,
    )
    assert [tuple(cfg.values()) for cfg, _ in results] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for cfg, rep in results:
        if (cfg["stride"], cfg["padding"]) == (1, 0):
            assert rep.ok, rep.table()  # the one configuration the bug is right for
        else:
            assert not rep.ok and "x" in rep.failures, (cfg, rep.table())
            assert rep.checks["structure"].ok  # shapes right, values wrong
    # the correct backward passes where the buggy one fails
    assert check_layer(Conv1D(k=3, stride=2, padding=1), (9,), batch=2, cotangents=2).ok


def test_bug3_backward_ignores_dy():
    rep = check_layer(IgnoresDy(3), (4,))
    assert not rep.ok
    assert rep.checks["linear_in_dy"].ok is False
    assert rep.checks["zero_dy"].ok is False and "W" in rep.checks["zero_dy"].detail
    assert all(not r.ok and r.rel_vjp > 1e-3 for r in rep.rows)
    assert rep.kinks_redrawn == 0


def test_bug4_nondeterministic_backward():
    rep = check_layer(Nondeterministic(3), (4,), cotangents=2)
    assert not rep.ok and rep.failures == ["deterministic"], rep.table()
    assert "differ" in rep.checks["deterministic"].detail


@pytest.mark.parametrize("cls,words", [(WrongShape, "shape (4,)"), (MissingLeaf, "missing")])
def test_bug5_wrong_shape_or_missing_leaf(cls, words):
    rep = check_layer(cls(3), (4,))
    assert not rep.ok and rep.failures == ["b", "structure"], rep.table()
    detail = rep.checks["structure"].detail
    assert "'b'" in detail and words in detail, detail
    assert not _rows(rep)["b"].ok and _rows(rep)["W"].ok
    assert "FAIL" in rep.table()
    json.dumps(rep.to_dict())


def test_backward_that_raises_gives_a_failing_report():
    rep = check_layer(Raises(3), (4,))
    assert not rep.ok and "raised" in rep.checks["structure"].detail
    assert all(not r.ok for r in rep.rows)


def test_undeclared_randomness_is_caught():
    @dataclasses.dataclass(frozen=True)
    class Undeclared(Dropout):
        stochastic = False

    rep = check_layer(Undeclared(0.5), (6,))
    assert "stochastic_flag" in rep.failures and all(r.ok for r in rep.rows), rep.table()


def test_undeclared_batch_coupling_is_caught():
    rep = check_layer(BatchNorm(coupled=False), (3,))
    assert rep.failures == ["batch_independent"], rep.table()


# ----------------------------------------------------------------------------- models
def test_check_model_passes_and_catches_one_wrong_leaf():
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 3), jnp.float64)
    y = jnp.array([0, 1, 2, 3, 1, 0])
    rep = check_model(TinyModel(), x, y)
    assert rep.ok, rep.table()
    assert [r.name for r in rep.rows] == ["W1", "W2", "b1", "b2"]
    assert rep.kind == "model" and "manual vs jax.grad" in rep.table()

    mask = jnp.array([1.0, 1, 1, 0, 1, 0])
    assert check_model(TinyModel(), x, y, mask=mask).ok

    bad = check_model(TinyModel(bug="b1"), x, y)
    assert not bad.ok and "b1" in bad.failures and "all_vs_jax_grad" in bad.failures
    assert [r.name for r in bad.rows if not r.ok] == ["b1"]
    json.dumps(bad.to_dict())


# ----------------------------------------------------------------------------- CLI helpers
def test_load_target_errors(tmp_path):
    with pytest.raises(ValueError, match="module:attribute"):
        load_target("jbp.check")
    with pytest.raises(ValueError, match="not found"):
        load_target("no_such_module_jbp_xyz:thing")
    with pytest.raises(ValueError, match="no such file"):
        load_target(str(tmp_path / "missing.py") + ":thing")
    with pytest.raises(ValueError, match="no attribute 'Nope'"):
        load_target(f"{__file__}:Nope")
    with pytest.raises(ValueError, match="needs arguments"):
        load_target(f"{__file__}:Dense")
    with pytest.raises(ValueError, match="neither a layer"):
        load_target("json:decoder.JSONDecodeError.__doc__")


def test_load_target_resolves_layers_models_and_factories(tmp_path):
    assert load_target(f"{__file__}:make_dense").n_out == 3  # zero-argument factory
    model = load_target(f"{__file__}:TinyModel")  # a class: instantiated
    assert model.n_out == 4 and callable(model.loss_and_grad)
    f = tmp_path / "mine.py"
    f.write_text(
        "import types\n"
        "class L:\n"
        "    def init(self, key, s, dtype=None): return (), (), s\n"
        "    def forward(self, p, st, x, *, train=False, key=None): return x, None, st\n"
        "    def backward(self, p, c, dy): return (), dy\n"
        "NS = types.SimpleNamespace(layer=L())\n"
    )
    layer = load_target(f"{f}:NS.layer")
    assert check_layer(layer, (3,)).ok


def test_run_cli(capsys):
    assert run_cli(f"{__file__}:make_dense", in_shape=(4,)) == 0
    assert "PASS" in capsys.readouterr().out
    with pytest.raises(ValueError, match="in_shape"):
        run_cli(f"{__file__}:make_dense")
    assert run_cli(f"{__file__}:Sum2", in_shape="3;3") == 0  # two inputs
    assert "x[1]" in capsys.readouterr().out
    assert run_cli(f"{__file__}:TinyModel", batch=5, as_json=True) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    d = json.loads(last)
    assert d["ok"] is True and d["kind"] == "model" and len(d["rows"]) == 4


def test_run_cli_fails_for_a_planted_bug(tmp_path, capsys):
    f = tmp_path / "bad.py"
    f.write_text(
        "import jax.numpy as jnp\n"
        "class Scale:\n"
        "    def init(self, key, s, dtype=jnp.float32): return {'s': jnp.ones(s, dtype)}, (), s\n"
        "    def forward(self, p, st, x, *, train=False, key=None): return x * p['s'], x, st\n"
        "    def backward(self, p, c, dy): return {'s': (dy * c).sum(0) * 1.01}, dy * p['s']\n"
    )
    assert run_cli(f"{f}:Scale", in_shape="3", as_json=True) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and json.loads(out.strip().splitlines()[-1])["failures"] == ["s"]


# ----------------------------------------------------------------------------- jbp.layers
def _framework():
    """jbp.layers / combinators / model when they are there (they are written concurrently)."""
    try:
        mods = [importlib.import_module(f"jbp.{m}") for m in ("layers", "combinators", "model")]
    except Exception:  # noqa: BLE001
        return None
    need = [(0, "Dense"), (0, "Activation"), (1, "Sequential"), (1, "Residual"), (1, "Autodiff")]
    return mods if all(hasattr(mods[i], n) for i, n in need) else None


@pytest.mark.skipif(_framework() is None, reason="jbp.layers / combinators not there yet")
def test_jbp_layers_and_combinators_pass():
    layers, comb, model = _framework()
    assert check_layer(layers.Activation("tanh"), (4,)).ok
    seq = comb.Sequential(layers.Dense(5, "tanh"), comb.Residual(layers.Dense(5, "tanh")))
    rep = check_layer(seq, (4,))
    assert rep.ok, rep.table()
    assert [r.name for r in rep.rows] == ["0/W", "0/b", "1/f/W", "1/f/b", "x"]
    auto = comb.Autodiff(lambda p, x: jnp.sin(x) * p, lambda k, s, dt: jnp.ones(s, dt))
    assert check_layer(auto, (3,)).ok
    if hasattr(model, "Network"):
        net = model.Network(
            comb.Sequential(layers.Dense(5, "tanh"), layers.Dense(3)), in_shape=(4,)
        )
        x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)))
        rep = check_model(net, x, jnp.array([0, 1, 2, 0, 1, 2]))
        assert rep.ok, rep.table()


def test_rel_diff():
    assert rel_diff(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_diff([1.0, 0.0], [-1.0, 0.0]) == 1.0


def test_a_gradient_that_is_zero_computed_as_noise_passes():
    """A bias before BatchNorm has gradient exactly 0 (the batch mean takes it out); the
    backward and jax.vjp each give rounding noise there, which is not a difference."""
    import jbp

    for layer, in_shape in (
        (jbp.Sequential(jbp.Dense(8), jbp.BatchNorm()), (5,)),
        (jbp.Sequential(jbp.Conv(2, 3, 1, "SAME"), jbp.BatchNorm()), (5, 5, 1)),
    ):
        rep = check_layer(layer, in_shape)
        assert rep.ok, rep.table()
    body = jbp.Sequential(jbp.Dense(8), jbp.BatchNorm(), jbp.Activation("relu"), jbp.Dense(3))
    net = jbp.Network(body, "softmax_cross_entropy", in_shape=(5,))
    r = np.random.default_rng(0)
    rep = check_model(net, r.normal(size=(8, 5)), r.integers(0, 3, 8))
    assert rep.ok, rep.table()
    # a wrong gradient where the true one is zero is still caught
    wrong = jbp.layer(
        lambda key, s, dtype: ({"b": jnp.zeros(s, dtype)}, (), s),
        lambda p, st, x, *, train, key: (x + p["b"] - jnp.mean(x + p["b"], 0), None, st),
        lambda p, cache, dy: ({"b": 1e-9 * jnp.sum(dy, 0)}, dy - jnp.mean(dy, 0)),
    )
    rep = check_layer(wrong, (4,))
    assert not rep.ok and "b" in rep.failures, rep.table()


def test_a_batch_coupled_layer_is_checked_with_a_masked_row_too():
    """The mask is what a ragged last batch runs: a backward that ignores it is caught."""
    import jbp

    rep = check_layer(jbp.BatchNorm(), (4,))
    assert rep.ok and "x (masked)" in [r.name for r in rep.rows], rep.table()

    @dataclasses.dataclass(frozen=True)
    class IgnoresTheMask(jbp.BatchNorm):
        def backward(self, params, cache, dy):
            return super().backward(params, {**cache, "w": jnp.ones_like(cache["w"])}, dy)

    rep = check_layer(IgnoresTheMask(), (4,))
    assert not rep.ok and "x (masked)" in rep.failures, rep.table()
    assert not [f for f in rep.failures if "masked" not in f]  # unmasked, it is right
