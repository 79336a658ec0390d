"""The CNN workload of ``jbp bench``: jbp's hand-written convolution backward side by side.

Every contender trains the same network — conv 3×3·32 (SAME) – relu – max-pool 2 – conv 3×3·64
– relu – max-pool 2 – dense 128 – relu – dense 10, softmax cross-entropy, Adam 1e-3, batch
128 — on the same 28×28×1 images from the same fresh parameters (no dropout, no BatchNorm:
the same arithmetic for all). About 4.24 M multiply-adds per example forward, so a training
step of 128 examples is ≈ 3.3 GFLOP (forward 2·MACs, backward 4·MACs).

Contenders (names as in the table, :data:`CONTENDERS`):

* ``jbp-manual``: ``jbp.models.cnn`` in jbp's epoch program (``lax.scan`` over the epoch),
  every backward hand-written: the first convolution (one input channel) as patches·matrix,
  dW = Pᵀ·dY; the second (32 input channels) as Winograd F(2×2, 3×3), 16 matmuls over the
  channels (see :mod:`jbp.conv` and :mod:`jbp.winograd`). Its GFLOP/s column counts the
  direct convolution's FLOPs, as for every contender, so it is throughput in those units.
* ``jbp-autodiff``: the same jbp forward, differentiated by ``jax.grad``.
* ``jax-conv-jit``: ``lax.conv_general_dilated`` + ``reduce_window``, ``jax.value_and_grad`` and
  optax, one jitted step per mini-batch from a Python loop (what most JAX code does).
* ``jax-conv-scan``: the same step inside ``lax.scan`` over the epoch (XLA's CPU convolution is
  much slower inside a loop body, as JAX's GitHub issue #12868 reports).
* ``flax-nnx``: ``nnx.Conv`` / ``nnx.max_pool`` / ``nnx.Linear`` and ``nnx.Optimizer``, the step
  jitted around ``nnx.split``/``merge`` (Flax imported only when it is built).
* ``torch``: PyTorch eager, ``nn.Conv2d`` (NCHW), ``torch.optim.Adam`` (when torch imports;
  imported only when it is built; on the GPU when JAX runs on one).

Each runner has ``epoch(budget_s) -> examples trained`` and ``accuracy(x, y)``; the Python-loop
ones stop early, at a whole mini-batch, once ``budget_s`` seconds have passed.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jbp.bench.dense as dense
import jbp.bench.eager as eager

CONTENDERS = ("jbp-manual", "jbp-autodiff", "jax-conv-jit", "jax-conv-scan", "flax-nnx", "torch")


class CnnWorkload(NamedTuple):
    """The CNN every contender trains (see the module docstring)."""

    name: str = "cnn"
    image: tuple = (28, 28, 1)
    channels: tuple = (32, 64)
    hidden: int = 128
    n_classes: int = 10
    optimizer: str = "adam"
    lr: float = 1e-3
    batch: int = 128

    @property
    def weights(self):
        """Multiply-adds per example of the forward pass (so 6·weights FLOPs per example)."""
        h, w, c = self.image
        c1, c2 = self.channels
        conv1 = h * w * c1 * 9 * c
        conv2 = (h // 2) * (w // 2) * c2 * 9 * c1
        flat = (h // 4) * (w // 4) * c2
        return conv1 + conv2 + flat * self.hidden + self.hidden * self.n_classes

    def label(self):
        c1, c2 = self.channels
        return (
            f"(cnn) conv{c1}-pool-conv{c2}-pool-dense{self.hidden}-dense{self.n_classes} "
            f"{self.optimizer} b{self.batch}"
        )


WORKLOAD = CnnWorkload()


def init_params(w, seed, dtype=np.float32):
    """Fresh shared parameters: He normal kernels (relu follows), zero biases.

    ``[(W1, b1), (W2, b2), (W3, b3), (W4, b4)]`` with HWIO kernels and (n_in, n_out) matrices.
    """
    rng = np.random.default_rng(seed)
    h, wd, c = w.image
    c1, c2 = w.channels
    flat = (h // 4) * (wd // 4) * c2
    shapes = [(3, 3, c, c1), (3, 3, c1, c2), (flat, w.hidden), (w.hidden, w.n_classes)]
    out = []
    for i, s in enumerate(shapes):
        fan_in = math.prod(s[:-1])
        var = (2.0 if i < 3 else 1.0) / fan_in
        kernel = rng.standard_normal(s).astype(np.float32) * np.float32(math.sqrt(var))
        out.append((kernel.astype(dtype), np.zeros((s[-1],), dtype)))
    return out


def images(x, w):
    """Flat rows (n, 784) as NHWC images (n, 28, 28, 1)."""
    return np.asarray(x, np.float32).reshape(-1, *w.image)


# ------------------------------------------------------------------------------ jbp
class JbpRunner:
    """``jbp.models.cnn`` in jbp's epoch program, manual or autodiff backward."""

    def __init__(self, w, x, y, params, backward, dtype):
        from jbp import models, optim, train

        self.net = models.cnn(w.image, w.n_classes, dropout=0.0, width=(*w.channels, w.hidden))
        self.opt = optim.adam(w.lr)
        base = train.init_state(self.net, self.opt, jax.random.key(0), dtype)
        leaves = [jnp.asarray(a, dtype) for pair in params for a in pair]
        p = jax.tree.unflatten(jax.tree.structure(base.params), leaves)
        self.state = base._replace(params=p, opt_state=self.opt.init(p))
        self.epoch_fn = jax.jit(train.make_epoch(self.net, self.opt, w.batch, backward=backward))
        self.x, self.y = jnp.asarray(images(x, w), dtype), jnp.asarray(y)
        self.xt, self.yt = self.x[: w.batch], self.y[: w.batch]
        self.epoch_size = x.shape[0]  # jbp pads and masks a ragged last batch

    def epoch(self, budget_s=None):
        self.state, metrics = self.epoch_fn(self.state, self.x, self.y, self.xt, self.yt)
        jax.block_until_ready(metrics)
        return self.epoch_size

    def accuracy(self, x, y):
        xs = jnp.asarray(images(x, WORKLOAD), self.x.dtype)
        return float(self.net.evaluate(self.state.params, self.state.model_state, xs, y)[1])


# ------------------------------------------------------------------ hand-rolled JAX
def _lax_forward(params, x):
    dn = ("NHWC", "HWIO", "NHWC")
    for kernel, bias in params[:2]:
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=dn) + bias
        x = jax.lax.reduce_window(
            jax.nn.relu(x), -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )
    x = x.reshape(x.shape[0], -1)
    (w3, b3), (w4, b4) = params[2:]
    return jax.nn.relu(x @ w3 + b3) @ w4 + b4


def _lax_loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(_lax_forward(params, x), y).mean()


def _lax_step(opt):
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(_lax_loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _scan_epoch(step, batch):
    """A whole epoch of ``step`` in ``lax.scan``, jitted with the state donated."""

    def run(params, opt_state, key, x, y):
        xb, yb = dense.shuffle(key, x, y, batch)

        def body(carry, b):
            p, s, loss = step(*carry, *b)
            return (p, s), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), (xb, yb))
        return params, opt_state, losses[-1]

    return jax.jit(run, donate_argnums=(0, 1))


class JaxConvRunner(dense.StepLoop):
    """``lax.conv_general_dilated`` network, ``jax.grad`` + optax; per-step jit or ``lax.scan``."""

    def __init__(self, w, x, y, params, dtype, scan):
        opt = optax.adam(w.lr)
        step = _lax_step(opt)
        self.params = [tuple(jnp.asarray(a, dtype) for a in pair) for pair in params]
        self.opt_state = opt.init(self.params)
        self.scan, self.batch = scan, w.batch
        if scan:
            self.run = _scan_epoch(step, w.batch)
        else:
            self.step = jax.jit(step, donate_argnums=(0, 1))
            self.shuffle = jax.jit(dense.shuffle, static_argnums=3)
        self.x, self.y = jnp.asarray(images(x, w), dtype), jnp.asarray(y)
        self.epoch_size = (x.shape[0] // w.batch) * w.batch
        self.key = jax.random.key(1)

    def epoch(self, budget_s=None):
        if not self.scan:
            return super().epoch(budget_s)
        self.key, sub = jax.random.split(self.key)
        self.params, self.opt_state, loss = self.run(
            self.params, self.opt_state, sub, self.x, self.y
        )
        jax.block_until_ready(loss)
        return self.epoch_size

    def _step(self, x, y):
        self.params, self.opt_state, loss = self.step(self.params, self.opt_state, x, y)
        return loss

    def accuracy(self, x, y):
        logits = jax.jit(_lax_forward)(self.params, jnp.asarray(images(x, WORKLOAD)))
        return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


# -------------------------------------------------------------------------- Flax NNX
class FlaxRunner(dense.FlaxRunner):
    """``nnx.Conv`` / ``nnx.Linear`` + ``nnx.Optimizer``; one jitted step per mini-batch (the
    step and epoch loop are the dense contender's)."""

    def __init__(self, w, x, y, params, dtype):
        from flax import nnx

        c1, c2 = w.channels
        flat = (w.image[0] // 4) * (w.image[1] // 4) * c2

        class Net(nnx.Module):
            def __init__(self, rngs):
                kw = dict(rngs=rngs, param_dtype=dtype, dtype=dtype)
                self.c1 = nnx.Conv(w.image[2], c1, (3, 3), padding="SAME", **kw)
                self.c2 = nnx.Conv(c1, c2, (3, 3), padding="SAME", **kw)
                self.l1 = nnx.Linear(flat, w.hidden, **kw)
                self.l2 = nnx.Linear(w.hidden, w.n_classes, **kw)

            def __call__(self, x):
                for conv in (self.c1, self.c2):
                    x = nnx.max_pool(nnx.relu(conv(x)), (2, 2), (2, 2))
                x = nnx.relu(self.l1(x.reshape(x.shape[0], -1)))
                return self.l2(x)

        model = Net(nnx.Rngs(0))
        for mod, (kernel, bias) in zip(
            (model.c1, model.c2, model.l1, model.l2), params, strict=True
        ):
            mod.kernel[...] = jnp.asarray(kernel, dtype)
            mod.bias[...] = jnp.asarray(bias, dtype)
        self._setup(model, optax.adam(w.lr), w, images(x, w), y, dtype)

        def predict(graphdef, nstate, x):
            model, _ = nnx.merge(graphdef, nstate)
            return model(x)

        self.predict = jax.jit(predict, static_argnums=0)

    def accuracy(self, x, y):
        logits = self.predict(self.graphdef, self.nstate, jnp.asarray(images(x, WORKLOAD)))
        return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


# ---------------------------------------------------------------------- PyTorch eager
class TorchRunner(eager.TorchRunner):
    """PyTorch eager: ``nn.Conv2d`` / ``nn.MaxPool2d`` / ``nn.Linear``, ``torch.optim.Adam`` (the
    epoch loop is the dense contender's)."""

    def __init__(self, w, x, y, params, dtype):
        import torch

        nn = torch.nn
        c1, c2 = w.channels
        flat = (w.image[0] // 4) * (w.image[1] // 4) * c2
        convs = [nn.Conv2d(w.image[2], c1, 3, padding=1), nn.Conv2d(c1, c2, 3, padding=1)]
        lins = [nn.Linear(flat, w.hidden), nn.Linear(w.hidden, w.n_classes)]
        with torch.no_grad():  # the shared parameters: HWIO -> OIHW; NHWC flattening order
            for conv, (kernel, bias) in zip(convs, params[:2], strict=True):
                conv.weight.copy_(
                    torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
                )
                conv.bias.copy_(torch.from_numpy(np.asarray(bias)))
            for lin, (kernel, bias) in zip(lins, params[2:], strict=True):
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.T)))
                lin.bias.copy_(torch.from_numpy(np.asarray(bias)))
        self.torch, self.device = torch, eager.torch_device(torch)
        self.model = nn.Sequential(
            convs[0], nn.ReLU(), nn.MaxPool2d(2), convs[1], nn.ReLU(), nn.MaxPool2d(2),
            _NhwcFlatten(torch), lins[0], nn.ReLU(), lins[1],
        ).to(self.device)  # fmt: skip
        self.opt = torch.optim.Adam(self.model.parameters(), lr=w.lr)
        self.loss_fn = nn.CrossEntropyLoss()
        nchw = images(x, w).transpose(0, 3, 1, 2).copy()
        self.x = torch.from_numpy(nchw).to(self.device)
        self.y = torch.from_numpy(np.asarray(y, np.int64)).to(self.device)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch
        self.gen = torch.Generator().manual_seed(1)

    def accuracy(self, x, y):
        torch = self.torch
        with torch.no_grad():
            xt = torch.from_numpy(images(x, WORKLOAD).transpose(0, 3, 1, 2).copy())
            pred = self.model(xt.to(self.device)).argmax(-1).cpu().numpy()
        return float(np.mean(pred == np.asarray(y)))


def _NhwcFlatten(torch):  # noqa: N802 - a module class, made where torch is imported
    class NhwcFlatten(torch.nn.Module):
        """Flatten in NHWC order, as the JAX contenders do (the dense weights are shared)."""

        def forward(self, x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)

    return NhwcFlatten()


_RUNNERS = {
    "jbp-manual": lambda w, x, y, p, dt: JbpRunner(w, x, y, p, "manual", dt),
    "jbp-autodiff": lambda w, x, y, p, dt: JbpRunner(w, x, y, p, "autodiff", dt),
    "jax-conv-jit": lambda w, x, y, p, dt: JaxConvRunner(w, x, y, p, dt, scan=False),
    "jax-conv-scan": lambda w, x, y, p, dt: JaxConvRunner(w, x, y, p, dt, scan=True),
    "flax-nnx": FlaxRunner,
    "torch": TorchRunner,
}


def make_runner(name, w, x, y, params, dtype):
    """Build CNN contender ``name`` on data ``(x, y)`` (flat or image rows) from ``params``."""
    if name not in _RUNNERS:
        raise ValueError(f"unknown CNN contender {name!r}; expected one of {', '.join(CONTENDERS)}")
    return _RUNNERS[name](w, x, y, params, dtype)
