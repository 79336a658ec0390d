"""Timing jbp's training throughput against the baselines: :func:`run`.

For each workload every contender (:mod:`jbp.bench.dense`, :mod:`jbp.bench.cnn`) trains the
same network with the same optimizer, batch size and data from the same fresh parameters.
Two numbers per contender:

* **examples/s** — after a warm-up epoch (compilation done), the best of ``repeats`` timed
  epochs (best, not mean: other processes share the CPUs and only ever slow a run down);
* **first epoch s** — end to end from fresh parameters: building the contender, compiling,
  and one epoch over the data (extrapolated at the warm rate when a Python-loop contender
  stopped early on its time budget; marked ``~`` in the table).

Achieved arithmetic is ``6·weights·examples/s`` (forward 2·W, backward 4·W multiply-adds
counted as 2 FLOPs, biases and elementwise work ignored), compared with the machine's
matrix-multiply peak measured in the same run: the best time of an ``n × n`` by ``n × n``
matmul (n = 2048 by default) under ``jax.jit``, 2·n³ / t, measured before and after the
contenders (the better one is kept).

Workloads (:data:`WORKLOADS`): (a) 784-30-10 sigmoid, SGD 0.1, batch 10 (the network of
Nielsen's *Neural Networks and Deep Learning*, chapter 1); (b) 784-256-256-10 relu, Adam 1e-3,
batch 128; (c) 784-1024-1024-10 relu, Adam 1e-3, batch 512; (cnn) conv32-pool-conv64-pool-
dense128-dense10, Adam 1e-3, batch 128. Data: the Fashion-MNIST training set when installed,
random data of the same shape otherwise (the result says which).
"""

import datetime
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jbp.bench.cnn as cnn
import jbp.bench.dense as dense
import jbp.bench.eager as eager
from jbp.bench.dense import Workload

ALL_CONTENDERS = tuple(dict.fromkeys(dense.CONTENDERS + cnn.CONTENDERS))

WORKLOADS = {
    "a": Workload("a", (784, 30, 10), "sigmoid", "sgd", 0.1, 10),
    "b": Workload("b", (784, 256, 256, 10), "relu", "adam", 1e-3, 128),
    "c": Workload("c", (784, 1024, 1024, 10), "relu", "adam", 1e-3, 512),
    "cnn": cnn.WORKLOAD,  # conv32-pool-conv64-pool-dense128-dense10, Adam, batch 128
}


# ------------------------------------------------------------------------ machine
def machine():
    """A short description of where the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', dev.platform)}",
        "n_devices": len(jax.devices()),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


def matmul_peak(n=2048, dtype=jnp.float32, reps=5):
    """The machine's matmul throughput in GFLOP/s: best of ``reps`` jitted n³ products."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        mm(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def bench_data(n, seed=0):
    """``(x, y, source)``: n training examples of Fashion-MNIST, or random when it is missing."""
    from jbp import data

    try:
        ds = data.load("fashion-mnist")
        x, y, source = ds.x_train, ds.y_train, "fashion-mnist"
        if n > x.shape[0]:  # repeat to the size asked for
            reps = math.ceil(n / x.shape[0])
            x, y = np.tile(x, (reps, 1)), np.tile(y, reps)
        return np.asarray(x[:n], np.float32), np.asarray(y[:n], np.int32), source
    except data.DataError:
        rng = np.random.default_rng(seed)
        x = rng.random((n, 784), dtype=np.float32)
        return x, rng.integers(0, 10, n).astype(np.int32), "random"


# ------------------------------------------------------------------- one workload
def _error(name, e):
    return {"contender": name, "error": f"{type(e).__name__}: {e}"}


def _start(kind, names, w, x, y, params, dtype, budget_s):
    """Build each contender and train its first epoch (timed); a failure is a row, not fatal."""
    runners, rows = {}, {}
    for name in names:
        try:
            t0 = time.perf_counter()
            runners[name] = kind.make_runner(name, w, x, y, params, dtype)
            done = runners[name].epoch(budget_s)
            rows[name] = {
                "contender": name,
                "first_epoch_s": time.perf_counter() - t0,
                "_done": done,
                "examples_per_s": 0.0,
            }
        except Exception as e:  # a baseline that cannot run is reported, not fatal
            runners.pop(name, None)
            rows[name] = _error(name, e)
    return runners, rows


def _timed_round(runners, rows, budget_s):
    """One timed epoch of every contender in turn; each keeps its best rate."""
    for name, runner in list(runners.items()):
        try:
            t0 = time.perf_counter()
            k = runner.epoch(budget_s)
            rate = k / (time.perf_counter() - t0)
            rows[name]["examples_per_s"] = max(rows[name]["examples_per_s"], rate)
        except Exception as e:
            runners.pop(name)
            rows[name] = _error(name, e)


def _finish(r, runner, w):
    """Complete a row: the first epoch extrapolated if it stopped early, and its GFLOP/s."""
    if "error" in r:
        return r
    best, size = r["examples_per_s"], runner.epoch_size
    done = r.pop("_done")
    r["first_epoch_estimated"] = done < size
    if done < size:  # a Python loop stopped on its budget: finish the epoch at best rate
        r["first_epoch_s"] += (size - done) / best
    r["gflops"] = 6 * w.weights * best / 1e9
    return r


def bench_workload(names, w, x, y, *, repeats, budget_s, dtype, seed=0, log=print, kind=None):
    """Time contenders ``names`` on workload ``w``; one result dict per contender.

    Each contender is built and trained for one epoch from fresh parameters (timed: the
    end-to-end number), then the timed epochs run round-robin — contender 1, 2, …, 1, 2, … —
    so a change in the machine's load, or the warm-up of the first one to run, falls on every
    contender alike; each keeps its best epoch. ``kind`` is the module that builds the
    contenders (:mod:`jbp.bench.cnn` for a CNN workload, :mod:`jbp.bench.dense` otherwise).
    """
    kind = kind or (cnn if isinstance(w, cnn.CnnWorkload) else dense)
    if kind is cnn:
        params = cnn.init_params(w, seed)
    else:
        params = dense.init_params(w.sizes, w.activation, seed)
    runners, rows = _start(kind, names, w, x, y, params, dtype, budget_s)
    for _ in range(repeats):
        _timed_round(runners, rows, budget_s)
    out = []
    for name in names:
        r = _finish(rows[name], runners.get(name), w)
        log(
            f"  {w.label()}  {name:<13} "
            + (r["error"] if "error" in r else f"{r['examples_per_s']:>10,.0f} examples/s")
        )
        out.append(r)
    return out


# ------------------------------------------------------------------------ the run
def _check(workloads, contenders, n_examples):
    for name in contenders:
        if name not in ALL_CONTENDERS:
            raise ValueError(
                f"unknown contender {name!r}; expected one of {', '.join(ALL_CONTENDERS)}"
            )
    for wl in workloads:
        if wl not in WORKLOADS:
            raise ValueError(f"unknown workload {wl!r}; expected one of {', '.join(WORKLOADS)}")
    biggest = max(WORKLOADS[wl].batch for wl in workloads)
    if n_examples < biggest:
        raise ValueError(
            f"n_examples must be at least the largest batch ({biggest}), got {n_examples}"
        )


def _workload_result(wl, contenders, x, y, peak, *, cnn_examples, bf16, **kw):
    """Run one workload; its JSON-ready entry (rows with % of peak and jbp's speed ratio)."""
    w = WORKLOADS[wl]
    valid = cnn.CONTENDERS if wl == "cnn" else dense.CONTENDERS
    names = [c for c in contenders if c in valid and not (c == "numpy" and bf16)]
    # The CNN takes a subset: a jax.grad lax.conv epoch inside lax.scan runs ~0.7 s a step.
    n = min(x.shape[0], cnn_examples) if wl == "cnn" else x.shape[0]
    rows = bench_workload(names, w, x[:n], y[:n], **kw)
    ref = next((r for r in rows if r["contender"] == "jbp-manual" and "error" not in r), None)
    for r in rows:
        if "error" not in r:
            r["pct_peak"] = 100 * r["gflops"] / peak
            r["vs_jbp"] = ref["examples_per_s"] / r["examples_per_s"] if ref else None
    return {
        **w._asdict(),
        "weights": w.weights,
        "n_examples": n,
        "label": w.label(),
        "results": rows,
    }


def run(
    workloads=("a", "b", "c"),
    contenders=ALL_CONTENDERS,
    *,
    n_examples=60000,
    cnn_examples=6400,
    repeats=3,
    budget_s=3.0,
    bf16=False,
    peak_n=2048,
    log=print,
):
    """Run the benchmark; return the JSON-ready result dict (see :func:`jbp.bench.table`)."""
    _check(workloads, contenders, n_examples)
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    skipped = ["torch"] if "torch" in contenders and not eager.torch_available() else []
    contenders = [c for c in contenders if c not in skipped]
    x, y, source = bench_data(n_examples)
    peak = matmul_peak(peak_n, dtype)
    log(f"jbp bench: data {source} ({n_examples} examples), matmul peak {peak:.0f} GFLOP/s")
    out = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "data": source,
        "n_examples": n_examples,
        "dtype": "bfloat16" if bf16 else "float32",
        "repeats": repeats,
        "budget_s": budget_s,
        "peak_gflops": peak,
        "peak_matmul": f"{peak_n}^3",
        "skipped": skipped,
        "workloads": {},
    }
    for wl in workloads:
        out["workloads"][wl] = _workload_result(
            wl, contenders, x, y, peak, cnn_examples=cnn_examples, bf16=bf16,
            repeats=repeats, budget_s=budget_s, dtype=dtype, log=log,
        )  # fmt: skip
    # Other processes only ever slow the matmul down: keep the best of a second measurement
    # at the end, and express every row against it.
    out["peak_gflops"] = peak = max(peak, matmul_peak(peak_n, dtype))
    for entry in out["workloads"].values():
        for r in entry["results"]:
            if "error" not in r:
                r["pct_peak"] = 100 * r["gflops"] / peak
    return out
