"""Time jbp.Conv's formulations on the backend JAX runs on: the measurement behind
``Conv(algorithm="auto")``.

    python scripts/conv_formulations.py [--out DIR] [--batch 128] [--quick]

For each layer of the CNN (and one wider), and each formulation (``patches``, ``winograd``,
``xla``), the forward plus the hand-written backward (dW and dX) in float32, timed two ways:
as one jitted call per step, and inside a ``lax.scan`` of 20 steps (what jbp's epoch runs);
ms per step, the best of several runs. Then the whole CNN of ``jbp train --model cnn`` (no
dropout) one epoch of 6,400 examples per formulation, in jbp's epoch program. Before timing,
each formulation passes ``jbp.check_layer`` in float64 on this backend. Prints a table and
writes ``conv_formulations.json`` to ``--out``.
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import jbp  # noqa: E402
from jbp import models, optim, train  # noqa: E402
from jbp.conv import ALGORITHMS, Conv  # noqa: E402

FORMULATIONS = [a for a in ALGORITHMS if a != "auto"]
LAYERS = [((28, 28, 1), 32), ((14, 14, 32), 64), ((7, 7, 64), 128)]


def _best(fn, reps):
    """min over ``reps`` of fn()'s wall seconds (fn blocks until its result is ready)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def layer_times(layer, in_shape, batch, reps, steps=20):
    params, _, _ = layer.init(jax.random.key(0), in_shape, jnp.float32)
    xs = jax.random.normal(jax.random.key(1), (steps, batch, *in_shape), jnp.float32)

    def step(p, x):
        y, cache, _ = layer.forward(p, (), x)
        grads, dx = layer.backward(p, cache, y)  # the gradient of ½‖y‖²
        p = jax.tree.map(lambda a, g: a - 1e-6 * g, p, grads)
        return p, jnp.sum(dx[:, 0, 0, 0])

    one = jax.jit(step)
    batches = list(xs)  # sliced once, outside the timing

    def per_call():
        p = params
        for x in batches:
            p, s = one(p, x)
        jax.block_until_ready(s)

    scan = jax.jit(lambda p, xs: jax.lax.scan(step, p, xs))

    def in_scan():
        jax.block_until_ready(scan(params, xs))

    (call, call_med), (sc, sc_med) = _best(per_call, reps), _best(in_scan, reps)
    ms = 1e3 / steps
    return {"per_call": call * ms, "per_call_median": call_med * ms,
            "scan": sc * ms, "scan_median": sc_med * ms}  # fmt: skip


def cnn_epoch(algorithm, x, y, batch, reps):
    net = models.cnn(x.shape[1:], 10, dropout=0.0, algorithm=algorithm)
    opt = optim.adam(1e-3)
    state = train.init_state(net, opt, jax.random.key(0), jnp.float32)
    epoch = jax.jit(train.make_epoch(net, opt, batch, backward="manual"))
    holder = [state]

    def run():
        holder[0], metrics = epoch(holder[0], x, y, x[:batch], y[:batch])
        jax.block_until_ready(metrics)

    best, med = _best(run, reps)
    return {"epoch_s": best, "examples_per_s": x.shape[0] / best, "epoch_median_s": med}


def check(algorithm):
    with jax.enable_x64(True):
        layer = Conv(5, (3, 3), padding=((1, 2), (0, 1)), algorithm=algorithm)
        rep = jbp.check_layer(layer, (6, 5, 16), batch=2)
    return {"ok": bool(rep.ok), "rel_vjp": max(r.rel_vjp for r in rep.rows),
            "rel_fd": max(r.rel_fd for r in rep.rows)}  # fmt: skip


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one layer, 2 reps, 1,280 examples")
    args = ap.parse_args()
    reps = 2 if args.quick else args.reps
    dev = jax.devices()[0]
    out = {"backend": jax.default_backend(), "device": dev.device_kind, "jax": jax.__version__,
           "batch": args.batch, "checks": {}, "layers": [], "cnn": {}}  # fmt: skip
    print(f"backend {out['backend']} ({out['device']}), jax {out['jax']}", flush=True)
    for a in FORMULATIONS:
        out["checks"][a] = c = check(a)
        print(f"check_layer float64 {a:9s} ok={c['ok']} vjp {c['rel_vjp']:.1e} "
              f"fd {c['rel_fd']:.1e}", flush=True)  # fmt: skip
    for in_shape, f in LAYERS[:1] if args.quick else LAYERS:
        for a in FORMULATIONS:
            layer = Conv(f, (3, 3), padding="SAME", algorithm=a)
            t = layer_times(layer, in_shape, args.batch, reps)
            out["layers"].append({"in_shape": in_shape, "features": f, "algorithm": a, **t})
            print(f"{'x'.join(map(str, in_shape)):>9s} -> {f:<4d} {a:9s} per call "
                  f"{t['per_call']:8.3f} ms  in scan {t['scan']:8.3f} ms", flush=True)  # fmt: skip
    n = 1280 if args.quick else 6400
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((n, 28, 28, 1), np.float32))
    y = jnp.asarray(rng.integers(0, 10, n))
    for a in ["auto", *FORMULATIONS]:
        out["cnn"][a] = r = cnn_epoch(a, x, y, args.batch, reps)
        print(f"cnn epoch {a:9s} {r['epoch_s'] * 1e3:8.1f} ms  "
              f"{r['examples_per_s']:10.0f} examples/s", flush=True)  # fmt: skip
    path = pathlib.Path(args.out) / "conv_formulations.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
