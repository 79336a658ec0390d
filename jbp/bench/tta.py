"""Time to accuracy on Fashion-MNIST: wall seconds from fresh parameters, compilation included.

Two recipes, both :class:`jbp.config.RunConfig` values (what ``jbp train`` flags describe):

* :data:`TTA_RECIPE`, jbp's fastest recipe to ≥ 89 % test accuracy: 784-512-256-10 relu,
  Adam 1e-3 cut to 1e-4 after epoch 4, batch 128, 6 epochs;
* :data:`BASELINE_CONFIG`, the baselines' recipe (:data:`BASELINE_RECIPE` for 10 epochs:
  784-256-10 relu, Adam 1e-3, batch 128), trained by jbp and by every baseline that can
  report its accuracy (``jax-scan``, ``torch``).

jbp's runs are built by :func:`jbp.recipe.build` and trained by :func:`jbp.fit` in this
process; each result carries the equivalent ``jbp train`` command line.
"""

import time

import jax
import jax.numpy as jnp

import jbp.bench.dense as dense
import jbp.bench.eager as eager
from jbp.config import RunConfig

#: The baselines' time-to-accuracy network, optimizer and batch size, and its epochs.
BASELINE_RECIPE = dense.Workload("baseline", (784, 256, 10), "relu", "adam", 1e-3, 128)
BASELINE_EPOCHS = 10
#: The same recipe as a jbp run.
BASELINE_CONFIG = RunConfig(
    data="fashion-mnist",
    layers=BASELINE_RECIPE.sizes,
    activation=BASELINE_RECIPE.activation,
    optimizer=BASELINE_RECIPE.optimizer,
    lr=BASELINE_RECIPE.lr,
    batch_size=BASELINE_RECIPE.batch,
    epochs=BASELINE_EPOCHS,
)
#: jbp's fastest recipe to ≥ 89 % Fashion-MNIST test accuracy.
TTA_RECIPE = RunConfig(
    data="fashion-mnist",
    layers=(None, 512, 256, None),
    activation="relu",
    optimizer="adam",
    lr=1e-3,
    batch_size=128,
    epochs=6,
    schedule="piecewise",
    schedule_options=(("boundaries_epochs", (4,)), ("values", (1e-4,))),
)


def command(cfg):
    """The ``jbp train`` command line that runs ``cfg``."""
    from jbp import flags

    return "jbp train " + " ".join(flags.to_argv(cfg))


def tta_jbp(cfg, label):
    """Train the run ``cfg`` in this process; wall time includes compilation, not loading."""
    from jbp import recipe, train

    r = recipe.build(cfg)
    t0 = time.perf_counter()
    _, hist = train.fit(
        r.model,
        r.optimizer,
        r.data,
        batch_size=r.batch_size,
        epochs=r.epochs,
        key=jax.random.key(r.config.seed),
        backward=r.config.backward,
        dtype=r.dtype,
    )
    seconds = time.perf_counter() - t0
    return {
        "name": label,
        "seconds": seconds,
        "test_accuracy": hist[-1]["test_accuracy"],
        "recipe": command(cfg),
    }


def tta_baseline(name, ds):
    """Train baseline ``name`` with the baselines' recipe on the data set ``ds``."""
    w, epochs = BASELINE_RECIPE, BASELINE_EPOCHS
    params = dense.init_params(w.sizes, w.activation, 0)
    t0 = time.perf_counter()
    runner = dense.make_runner(name, w, ds.x_train, ds.y_train, params, jnp.float32)
    for _ in range(epochs):
        runner.epoch()
    acc = runner.accuracy(ds.x_test, ds.y_test)
    seconds = time.perf_counter() - t0
    recipe = (
        f"{'-'.join(map(str, w.sizes))} {w.activation} {w.optimizer} {w.lr:g} "
        f"batch {w.batch} {epochs} epochs"
    )
    return {
        "name": name + " (baseline recipe)",
        "seconds": seconds,
        "test_accuracy": acc,
        "recipe": recipe,
    }


def time_to_accuracy(contenders=("jax-scan", "torch"), log=print):
    """jbp's fastest recipe and the baselines' recipe on Fashion-MNIST; list of result dicts."""
    from jbp import data

    ds = data.load("fashion-mnist")
    jobs = [
        lambda: tta_jbp(TTA_RECIPE, "jbp (fastest recipe)"),
        lambda: tta_jbp(BASELINE_CONFIG, "jbp-manual (baseline recipe)"),
    ]
    for c in contenders:
        if c == "torch" and not eager.torch_available():
            continue
        jobs.append(lambda c=c: tta_baseline(c, ds))
    out = []
    for job in jobs:
        try:
            r = job()
        except Exception as e:
            r = {"name": "?", "error": f"{type(e).__name__}: {e}"}
        outcome = (
            r["error"]
            if "error" in r
            else f"{r['seconds']:.2f} s, accuracy {r['test_accuracy']:.4f}"
        )
        log(f"  {r.get('name')}: {outcome}")
        out.append(r)
    return out
