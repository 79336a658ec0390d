"""The contenders of ``jbp bench``: jbp itself and what a user would otherwise write.

Every contender trains the same network (dense layers, hidden activation, softmax output,
mean cross-entropy), with the same optimizer, batch size and data, from the same fresh
parameters, and exposes one method::

    runner.epoch(budget_s=None) -> examples trained

which shuffles the training set, trains on it mini-batch by mini-batch and returns once
the result is on hand (``block_until_ready``). Contenders whose inner loop is Python may
stop early, at a whole mini-batch, once ``budget_s`` seconds have passed (so NumPy on the
large network does not take minutes); programs compiled for a whole epoch always finish it.

Contenders (names as in the table):

* ``jbp-manual`` / ``jbp-autodiff``: jbp's epoch program (:func:`jbp.train.make_epoch`,
  the one ``jbp.fit`` runs), with the hand-written backward or ``jax.grad``. Its per-epoch
  test evaluation gets a one-batch test set, so it does the same work as the others.
* ``jax-scan``: the fastest idiom a JAX user writes by hand: ``jax.value_and_grad`` and
  ``optax`` inside ``lax.scan`` over the epoch's mini-batches, jitted, state donated.
* ``jax-loop``: the same step jitted on its own and called from a Python loop.
* ``flax-nnx``: ``nnx.Linear`` layers and ``nnx.Optimizer`` with optax; the step is
  ``nnx.split``/``nnx.merge`` around ``jax.jit`` (the fast path of Flax's performance guide).
* ``torch``: PyTorch eager, ``nn.Linear`` layers, ``torch.optim`` (when torch imports).
* ``numpy``: BP1–BP4 in NumPy on whole mini-batches (Nielsen's equations, vectorised over
  the batch as in his chapter 2 exercise), with the same SGD / Adam written out.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

CONTENDERS = ("jbp-manual", "jbp-autodiff", "jax-scan", "jax-loop", "flax-nnx", "torch", "numpy")


def init_params(sizes, activation, seed, dtype=np.float32):
    """Fresh parameters shared by every contender: He (relu) / LeCun normal, zero biases."""
    rng = np.random.default_rng(seed)
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        hidden = i < len(sizes) - 2
        var = 2.0 / n_in if (hidden and activation == "relu") else 1.0 / n_in
        w = rng.standard_normal((n_in, n_out)).astype(np.float32) * np.float32(math.sqrt(var))
        params.append({"W": w.astype(dtype), "b": np.zeros((n_out,), dtype)})
    return params


def torch_available():
    """True when ``import torch`` works (the ``bench`` extra installs the CPU build)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


# ------------------------------------------------------------------------------ jbp
class JbpRunner:
    """jbp's own epoch program, as ``jbp.fit`` compiles it."""

    def __init__(self, w, x, y, params, backward, dtype):
        from jbp import mlp, train

        self.net = mlp.MLP(w.sizes, w.activation, "softmax", "cross_entropy")
        self.opt = _jbp_optimizer(w)
        params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        base = train.init_state(self.net, self.opt, jax.random.key(0), dtype)
        self.state = base._replace(params=params, opt_state=self.opt.init(params))
        self.epoch_fn = jax.jit(train.make_epoch(self.net, self.opt, w.batch, backward=backward))
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)
        self.xt, self.yt = self.x[: w.batch], self.y[: w.batch]
        self.n = self.epoch_size = x.shape[0]  # jbp pads and masks a ragged last batch

    def epoch(self, budget_s=None):
        self.state, metrics = self.epoch_fn(self.state, self.x, self.y, self.xt, self.yt)
        jax.block_until_ready(metrics)
        return self.n


def _jbp_optimizer(w):
    from jbp import optim

    return optim.sgd(w.lr) if w.optimizer == "sgd" else optim.adam(w.lr)


# ------------------------------------------------------------------ hand-rolled JAX
_ACT = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


def _jax_loss(activation):
    act = _ACT[activation]

    def loss(params, x, y):
        for p in params[:-1]:
            x = act(x @ p["W"] + p["b"])
        logits = x @ params[-1]["W"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _optax_optimizer(w):
    return optax.sgd(w.lr) if w.optimizer == "sgd" else optax.adam(w.lr)


def _jax_step(w):
    loss_fn, opt = _jax_loss(w.activation), _optax_optimizer(w)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, opt


def _shuffle(key, x, y, batch):
    """The usual idiom: permute, drop the ragged tail, reshape to (batches, B, ...)."""
    nb = x.shape[0] // batch
    perm = jax.random.permutation(key, x.shape[0])[: nb * batch]
    return x[perm].reshape(nb, batch, -1), y[perm].reshape(nb, batch)


class JaxScanRunner:
    """``jax.value_and_grad`` + optax in ``lax.scan``: one jitted program per epoch."""

    def __init__(self, w, x, y, params, dtype):
        step, opt = _jax_step(w)
        batch = w.batch

        def epoch(params, opt_state, key, x, y):
            key, sub = jax.random.split(key)
            xb, yb = _shuffle(sub, x, y, batch)

            def body(carry, b):
                p, s, loss = step(*carry, *b)
                return (p, s), loss

            (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xb, yb))
            return params, opt_state, key, losses.mean()

        self.epoch_fn = jax.jit(epoch, donate_argnums=(0, 1))
        self.act = _ACT[w.activation]
        self.params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        self.opt_state = opt.init(self.params)
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)
        self.n = self.epoch_size = (x.shape[0] // batch) * batch

    def epoch(self, budget_s=None):
        self.params, self.opt_state, self.key, loss = self.epoch_fn(
            self.params, self.opt_state, self.key, self.x, self.y
        )
        jax.block_until_ready(loss)
        return self.n

    def accuracy(self, x, y):
        params = jax.tree.map(jnp.asarray, self.params)
        a = jnp.asarray(x, self.x.dtype)
        for p in params[:-1]:
            a = self.act(a @ p["W"] + p["b"])
        logits = a @ params[-1]["W"] + params[-1]["b"]
        return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


class JaxLoopRunner:
    """The same step jitted on its own, called once per mini-batch from Python."""

    def __init__(self, w, x, y, params, dtype):
        step, opt = _jax_step(w)
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.shuffle = jax.jit(_shuffle, static_argnums=3)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
        self.opt_state = opt.init(self.params)
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)

    def epoch(self, budget_s=None):
        t0 = time.perf_counter()
        self.key, sub = jax.random.split(self.key)
        xb, yb = self.shuffle(sub, self.x, self.y, self.batch)
        done = 0
        for i in range(xb.shape[0]):
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, xb[i], yb[i])
            done += self.batch
            # Checking the clock needs no device sync; the last step is waited for below.
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        jax.block_until_ready(loss)
        return done


# -------------------------------------------------------------------------- Flax NNX
class FlaxRunner:
    """Flax NNX + optax; ``nnx.split``/``merge`` around one ``jax.jit`` step."""

    def __init__(self, w, x, y, params, dtype):
        from flax import nnx

        act = _ACT[w.activation]

        class Net(nnx.Module):
            def __init__(self, sizes, rngs):
                self.layers = nnx.List(
                    [
                        nnx.Linear(i, o, rngs=rngs, param_dtype=dtype, dtype=dtype)
                        for i, o in zip(sizes[:-1], sizes[1:], strict=True)
                    ]
                )

            def __call__(self, x):
                for layer in self.layers[:-1]:
                    x = act(layer(x))
                return self.layers[-1](x)

        model = Net(w.sizes, nnx.Rngs(0))
        for layer, p in zip(model.layers, params, strict=True):  # the shared fresh params
            layer.kernel[...] = jnp.asarray(p["W"], dtype)
            layer.bias[...] = jnp.asarray(p["b"], dtype)
        optimizer = nnx.Optimizer(model, _optax_optimizer(w), wrt=nnx.Param)
        self.graphdef, self.nstate = nnx.split((model, optimizer))
        self.step = jax.jit(nnx_step, static_argnums=0, donate_argnums=1)
        self.shuffle = jax.jit(_shuffle, static_argnums=3)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.key = jax.random.key(1)
        self.x, self.y = jnp.asarray(x, dtype), jnp.asarray(y)

    def epoch(self, budget_s=None):
        t0 = time.perf_counter()
        self.key, sub = jax.random.split(self.key)
        xb, yb = self.shuffle(sub, self.x, self.y, self.batch)
        done = 0
        for i in range(xb.shape[0]):
            self.nstate, loss = self.step(self.graphdef, self.nstate, xb[i], yb[i])
            done += self.batch
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        jax.block_until_ready(loss)
        return done


def nnx_step(graphdef, nstate, x, y):
    """One Flax NNX training step on the split (model, optimizer): the performance guide's
    fast path, ``nnx.merge`` → ``nnx.value_and_grad`` → ``optimizer.update`` → ``nnx.state``."""
    from flax import nnx

    def loss_fn(model, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    model, optimizer = nnx.merge(graphdef, nstate)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss


# ---------------------------------------------------------------------- PyTorch eager
class TorchRunner:
    """PyTorch eager: ``nn.Sequential`` of ``nn.Linear``, ``torch.optim``, ``randperm``."""

    def __init__(self, w, x, y, params, dtype):
        import torch

        tdt = torch.bfloat16 if jnp.dtype(dtype) == jnp.bfloat16 else torch.float32
        act = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh}
        mods = []
        for i, p in enumerate(params):
            lin = torch.nn.Linear(*p["W"].shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["W"].T)))
                lin.bias.copy_(torch.from_numpy(np.asarray(p["b"])))
            mods.append(lin)
            if i < len(params) - 1:
                mods.append(act[w.activation]())
        self.torch = torch
        self.model = torch.nn.Sequential(*mods).to(tdt)
        if w.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=w.lr)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=w.lr)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = torch.from_numpy(np.asarray(x, np.float32)).to(tdt)
        self.y = torch.from_numpy(np.asarray(y, np.int64))
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.gen = torch.Generator().manual_seed(1)

    def epoch(self, budget_s=None):
        torch = self.torch
        t0 = time.perf_counter()
        n, b = self.x.shape[0], self.batch
        perm = torch.randperm(n, generator=self.gen)
        done = 0
        for i in range(n // b):
            idx = perm[i * b : (i + 1) * b]
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.x[idx]), self.y[idx])
            loss.backward()
            self.opt.step()
            done += b
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        return done

    def accuracy(self, x, y):
        torch = self.torch
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x, np.float32)).to(self.x.dtype)
            pred = self.model(xt).argmax(-1).numpy()
        return float(np.mean(pred == np.asarray(y)))


# ------------------------------------------------------------------------------ NumPy
class NumpyRunner:
    """BP1–BP4 in NumPy on whole mini-batches, with the same SGD / Adam."""

    def __init__(self, w, x, y, params, dtype):
        self.params = [{k: np.array(v, np.float32) for k, v in p.items()} for p in params]
        self.x, self.y = np.asarray(x, np.float32), np.asarray(y)
        self.w, self.batch = w, w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch
        self.m = [{k: np.zeros_like(v) for k, v in p.items()} for p in self.params]
        self.v = [{k: np.zeros_like(v) for k, v in p.items()} for p in self.params]
        self.t = 0
        self.rng = np.random.default_rng(1)
        self.eye = np.eye(w.sizes[-1], dtype=np.float32)

    def _grads(self, x, y):
        relu = self.w.activation == "relu"
        acts = [x]
        for p in self.params[:-1]:  # forward, keeping every layer's activation
            z = acts[-1] @ p["W"] + p["b"]
            acts.append(np.maximum(z, 0) if relu else 1 / (1 + np.exp(-z)))
        z = acts[-1] @ self.params[-1]["W"] + self.params[-1]["b"]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        dz = (e / e.sum(axis=1, keepdims=True) - self.eye[y]) / x.shape[0]  # BP1, fused
        grads = [None] * len(self.params)
        for l in reversed(range(len(self.params))):
            grads[l] = {"W": acts[l].T @ dz, "b": dz.sum(axis=0)}  # BP3, BP4
            if l > 0:  # BP2
                da = dz @ self.params[l]["W"].T
                a = acts[l]
                dz = da * (a > 0) if relu else da * a * (1 - a)
        return grads

    def _update(self, grads):
        lr = self.w.lr
        if self.w.optimizer == "sgd":
            for p, g in zip(self.params, grads, strict=True):
                for k in p:
                    p[k] -= lr * g[k]
            return
        self.t += 1
        b1, b2, eps = 0.9, 0.999, 1e-8
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            for k in p:
                m[k] *= b1
                m[k] += (1 - b1) * g[k]
                v[k] *= b2
                v[k] += (1 - b2) * g[k] ** 2
                p[k] -= lr * (m[k] / c1) / (np.sqrt(v[k] / c2) + eps)

    def epoch(self, budget_s=None):
        t0 = time.perf_counter()
        n, b = self.x.shape[0], self.batch
        perm = self.rng.permutation(n)
        done = 0
        for i in range(n // b):
            idx = perm[i * b : (i + 1) * b]
            self._update(self._grads(self.x[idx], self.y[idx]))
            done += b
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
        return done


def make_runner(name, w, x, y, params, dtype):
    """Build contender ``name`` for workload ``w`` on data ``(x, y)`` from ``params``."""
    if name == "jbp-manual":
        return JbpRunner(w, x, y, params, "manual", dtype)
    if name == "jbp-autodiff":
        return JbpRunner(w, x, y, params, "autodiff", dtype)
    if name == "jax-scan":
        return JaxScanRunner(w, x, y, params, dtype)
    if name == "jax-loop":
        return JaxLoopRunner(w, x, y, params, dtype)
    if name == "flax-nnx":
        return FlaxRunner(w, x, y, params, dtype)
    if name == "torch":
        return TorchRunner(w, x, y, params, dtype)
    if name == "numpy":
        return NumpyRunner(w, x, y, params, dtype)
    raise ValueError(f"unknown contender {name!r}; expected one of {', '.join(CONTENDERS)}")
