"""The eager contenders of ``jbp bench``'s dense workloads: PyTorch and NumPy.

Both train a stack of dense layers (hidden activation, softmax output, mean cross-entropy)
with SGD or Adam, one mini-batch per Python-loop iteration, from parameters given as a list
of ``{"W": (n_in, n_out), "b": (n_out,)}`` NumPy arrays (the same fresh parameters every
contender of a workload starts from). Each exposes::

    runner.epoch(budget_s=None) -> examples trained

which reshuffles the training set and trains on it, stopping early, at a whole mini-batch,
once ``budget_s`` seconds have passed (so NumPy on a large network does not take minutes).
``epoch_size`` is the number of examples a whole epoch trains (the ragged tail is dropped).

* :class:`TorchRunner`: PyTorch eager, ``nn.Linear`` layers, ``torch.optim``. ``torch`` is
  imported only when one is built (:func:`torch_available` says whether it can be).
* :class:`NumpyRunner`: the four back-propagation equations (BP1–BP4 in Nielsen's *Neural
  Networks and Deep Learning*, chapter 2: the output error, a layer's error from the next
  one's, the bias and the weight gradients) in NumPy, vectorised over whole mini-batches,
  with the same SGD / Adam written out.
"""

import time

import jax.numpy as jnp
import numpy as np


def torch_available():
    """True when ``import torch`` works (the ``bench`` extra installs the CPU build)."""
    try:
        import torch  # noqa: F401
    except Exception:
        return False
    return True


def torch_device(torch):
    """Where torch runs: the GPU when JAX's default backend is one and torch sees it, else the
    CPU (so each contender runs on the same kind of device as the JAX ones)."""
    import jax

    on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
    return torch.device("cuda" if on_gpu else "cpu")


class TorchRunner:
    """PyTorch eager: ``nn.Sequential`` of ``nn.Linear``, ``torch.optim``, ``randperm`` (on the
    GPU when JAX runs on one: :func:`torch_device`)."""

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
        self.torch, self.device = torch, torch_device(torch)
        self.model = torch.nn.Sequential(*mods).to(tdt).to(self.device)
        if w.optimizer == "sgd":
            self.opt = torch.optim.SGD(self.model.parameters(), lr=w.lr)
        else:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=w.lr)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.x = torch.from_numpy(np.asarray(x, np.float32)).to(tdt).to(self.device)
        self.y = torch.from_numpy(np.asarray(y, np.int64)).to(self.device)
        self.batch = w.batch
        self.epoch_size = (x.shape[0] // w.batch) * w.batch  # the ragged tail is dropped
        self.gen = torch.Generator().manual_seed(1)

    def epoch(self, budget_s=None):
        torch = self.torch
        t0 = time.perf_counter()
        n, b = self.x.shape[0], self.batch
        perm = torch.randperm(n, generator=self.gen).to(self.device)
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
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # the steps above were only queued
        return done

    def accuracy(self, x, y):
        torch = self.torch
        with torch.no_grad():
            xt = torch.from_numpy(np.asarray(x, np.float32)).to(self.x.dtype).to(self.device)
            pred = self.model(xt).argmax(-1).cpu().numpy()
        return float(np.mean(pred == np.asarray(y)))


class NumpyRunner:
    """Back-propagation in NumPy on whole mini-batches, with the same SGD / Adam."""

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
