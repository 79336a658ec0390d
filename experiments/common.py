"""What every experiment shares: the command line, writing results, data subsets, optimizers.

Each experiment ``experiments/<name>.py`` has ``main(argv) -> dict``; ``--quick`` is the CI
size, ``--out DIR`` redirects ``<name>.json`` and ``<name>.png`` (tests write into a temporary
folder so the committed full-run results stay untouched).

``optimizer(name, lr)`` returns the library's ``jbp.optim`` optimizer (verified against optax
and hand-worked recurrences in ``tests/test_optim.py``) and records its name in every JSON.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jbp

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
COLORS = {"sgd": "tab:blue", "momentum": "tab:orange", "rmsprop": "tab:green", "adam": "tab:red"}
LABELS = {"sgd": "GD", "momentum": "momentum", "rmsprop": "RMSprop", "adam": "Adam"}


def parse_args(argv, doc):
    """``--quick`` (CI size) and ``--out DIR`` (default ``experiments/results``)."""
    p = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small, fast run for CI")
    p.add_argument("--out", default=str(RESULTS_DIR), help="folder for <name>.json and .png")
    return p.parse_args(argv)


def _plain(x):
    """JSON-able copy: NumPy/JAX scalars and arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, (jax.Array, np.ndarray)):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def environment():
    """Where the numbers came from (timings depend on it)."""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def save(out, name, payload, fig):
    """Write ``out/<name>.json`` and ``out/<name>.png``; return the JSON-able payload."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = _plain({"experiment": name, "environment": environment(), **payload})
    (out / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return payload


def figure(nrows, ncols, size=(5.0, 3.8)):
    """A matplotlib figure (Agg backend: experiments never open windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(
        nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False, layout="tight"
    )


class Timer:
    """``with Timer() as t: ...; t.seconds``."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


# ----------------------------------------------------------------------------------- data
def fashion_subset(n_train, n_test, seed=0):
    """The first ``n_train`` / ``n_test`` examples of a fixed shuffle of Fashion-MNIST.

    Returns ``None`` when Fashion-MNIST is not installed (the caller falls back to digits).
    """
    try:
        ds = jbp.data.load("fashion-mnist")
    except jbp.data.DataError:
        return None
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(ds.y_train))[:n_train]
    te = rng.permutation(len(ds.y_test))[:n_test]
    return jbp.data.Dataset(ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te])


def image_data(n_train, n_test, seed=0):
    """``(name, Dataset)``: a Fashion-MNIST subset, or the digits set when it is missing."""
    ds = fashion_subset(n_train, n_test, seed)
    if ds is not None:
        return "fashion-mnist", ds
    return "digits", jbp.data.load("digits")


# ----------------------------------------------------------------------------- optimizers
def optimizer(name, lr, **hparams):
    """``(optax transformation, source)``: ``jbp.optim.<name>`` and the name recorded in JSON."""
    return jbp.optim.get(name, lr, **hparams), f"jbp.optim.{name}"


def optimizer_sources(names=OPTIMIZERS):
    """Which implementation each optimizer name resolves to (recorded in every JSON)."""
    return {n: f"jbp.optim.{n}" for n in names}


# ------------------------------------------------------------------------------ training
def fit_seeds(net, opt, data, *, batch_size, epochs, seeds, dtype=jnp.float32):
    """Train one network per seed at once: ``vmap`` of jbp's compiled epoch, ``scan`` over epochs.

    Each seed's run is the computation ``jbp.fit(net, opt, data, batch_size=…, epochs=…,
    key=jax.random.key(seed))`` performs — the same :func:`jbp.train.init_state` and
    :func:`jbp.train.make_epoch` — but all seeds and all epochs run in one XLA program, with
    no host round trip per epoch (what makes 5000 epochs × several seeds cheap).

    Returns:
      ``(states, history)``: the final ``TrainState`` with a leading seed axis, and a dict of
      arrays of shape ``(epochs, seeds)``: ``train_loss``, ``test_loss``, ``test_accuracy``,
      ``lr``.

    Raises:
      jbp.DivergenceError: some seed met a non-finite loss or gradient.
    """
    from jbp import train

    train.check_fit_args(net, data, batch_size, epochs, "manual")
    x, y, xt, yt = (jnp.asarray(a) for a in data)
    x, xt = x.astype(dtype), xt.astype(dtype)
    epoch = jax.vmap(train.make_epoch(net, opt, batch_size), in_axes=(0, None, None, None, None))

    @jax.jit
    def run(seed_array):
        states = jax.vmap(lambda s: train.init_state(net, opt, jax.random.key(s), dtype))(
            seed_array
        )

        def body(states, _):
            states, m = epoch(states, x, y, xt, yt)
            return states, m

        return jax.lax.scan(body, states, None, length=epochs)

    states, hist = run(jnp.asarray(seeds, jnp.uint32))
    bad = np.asarray(hist.pop("bad_step"))
    if (bad >= 0).any():
        e, s = np.argwhere(bad >= 0)[0]
        raise jbp.DivergenceError(int(e) + 1, int(bad[e, s]) + 1, states)
    return states, {k: np.asarray(v) for k, v in hist.items()}


def accuracy_per_seed(net, states, x, y):
    """Accuracy of every seed's parameters on ``(x, y)`` (array of shape (seeds,))."""
    acc = jax.vmap(lambda p: net.accuracy(p, jnp.asarray(x, jax.tree.leaves(p)[0].dtype), y))
    return np.asarray(acc(states.params))
