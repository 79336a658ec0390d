"""Data parallelism over devices and processes, with JAX's own machinery.

One mesh axis, ``"batch"``, over N devices. Every mini-batch of B examples (padded and
masked as in the engine) is split into N equal shards of ``c = ⌈B/N⌉`` rows; the last
shards take the padding, so a B that does not divide by N is handled, never refused. Each
device runs the manual backward (BP1–BP4) on its rows, and the shards are combined so the
result *is* the single-device masked mean, not an approximation of it::

    N = Σ_d Σᵢ maskᵢ  (lax.psum: the whole batch's real rows, taken by the loss head)
    L_d = Σᵢ maskᵢ·Cᵢ / N,  g_d = ∂L_d/∂θ       L = Σ_d L_d,  g = Σ_d g_d  (lax.psum)

(a plain ``pmean`` of per-shard means is wrong as soon as shards hold different numbers
of real rows, e.g. in the last, ragged batch; and layers with batch statistics, whose
gradients mix the shards, need every shard's cotangent on the global scale). Parameters and
optimizer state are
replicated; every device applies the same update to the same summed gradient, so they stay
identical without ever being broadcast again.

The whole epoch — ``lax.scan`` over the mini-batches, each step's psum, the optimizer, the
test metrics — is one program mapped over the mesh, by ``jax.shard_map`` (default) or by
``jax.pmap`` (the interface the mission names; in maintenance mode since JAX 0.8 and built on
shard_map); both run the *same* per-shard function and give the same parameters.

Several processes (``initialize``; one per host, or several on one machine): every process
draws the same permutation from the state's key, so the global batch order is known to all;
each process gathers only its own columns of each batch and hands them to
``jax.make_array_from_process_local_data``. Only process 0 writes (``is_writer``). A peer
that dies makes the next collective fail on the others; that failure is raised as
:class:`PeerError` (the command line turns it into one message and exit status 4). A peer
that hangs is caught by the distributed runtime's heartbeat (``heartbeat_timeout``), which
ends the survivors.

Reference: JAX docs, "Introduction to parallel programming", "Manual parallelism with
shard_map", and "Multi-process environments" (``jax.distributed.initialize``).
"""

import functools
import ipaddress
import os
import socket
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jbp import epoch as engine
from jbp.layers import batch_axis

AXIS = "batch"
MODES = ("shard_map", "pmap")
HEARTBEAT_TIMEOUT = 30  # s; JAX's default is 100. JBP_HEARTBEAT_TIMEOUT overrides.
INIT_TIMEOUT = 300  # s to wait for every process to join; JBP_INIT_TIMEOUT overrides.


class PeerError(RuntimeError):
    """A collective failed in a multi-process run: another process died or was stopped."""


def is_writer():
    """True in the one process that writes metrics, plots and checkpoints (process 0)."""
    return jax.process_index() == 0


# ------------------------------------------------------------------ set-up
def _check_int(name, v, lo):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {name}={v!r}")


def check_args(devices, parallel):
    """Validate ``devices`` and ``parallel`` outside ``jit``."""
    if devices is not None:
        _check_int("devices", devices, 1)
    if parallel not in MODES:
        raise ValueError(f"parallel must be one of {', '.join(MODES)}, got parallel={parallel!r}")


def _split_address(coordinator):
    host, sep, port = str(coordinator).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"coordinator must be HOST:PORT (e.g. 127.0.0.1:1234), got {coordinator!r}"
        )
    return host, int(port)


def _env_seconds(name, default):
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise ValueError(f"{name} must be a positive number of seconds, got {text!r}")
    return v


def setup(devices=None, coordinator=None, num_processes=None, process_id=None):
    """Configure devices and start JAX's multi-process runtime; call before any other JAX call.

    On CPU, ``devices`` simulates that many devices in all (``jax_num_cpu_devices``, split
    evenly over the processes); on GPU/TPU the devices are the real ones. With a
    ``coordinator``, calls :func:`initialize`. Raises ``ValueError`` for a bad combination.
    """
    multi = coordinator is not None or process_id is not None or (num_processes or 1) > 1
    procs = 1
    if multi:
        if coordinator is None or num_processes is None or process_id is None:
            raise ValueError(
                "multi-process training needs all of --coordinator HOST:PORT, "
                f"--num-processes N and --process-id I; got coordinator={coordinator!r}, "
                f"num_processes={num_processes!r}, process_id={process_id!r}"
            )
        _split_address(coordinator)
        _check_int("num_processes", num_processes, 1)
        _check_int("process_id", process_id, 0)
        if process_id >= num_processes:
            raise ValueError(
                f"process_id must be in [0, {num_processes - 1}] for num_processes="
                f"{num_processes}, got {process_id}"
            )
        procs = num_processes
    if devices is not None:
        _check_int("devices", devices, 1)
        if devices % procs:
            raise ValueError(
                f"devices={devices} must divide evenly over num_processes={procs} "
                f"(each process brings the same number of devices)"
            )
        try:  # only possible before JAX starts; afterwards make_mesh reports a shortfall
            jax.config.update("jax_num_cpu_devices", devices // procs)
        except RuntimeError:
            pass
    if multi:
        initialize(coordinator, num_processes, process_id)


def initialize(coordinator, num_processes, process_id, *, bind=None, heartbeat_timeout=None):
    """``jax.distributed.initialize`` with jbp's defaults: gloo on CPU, loopback-only bind.

    The coordinator (process 0) binds to the host named in ``coordinator`` — so
    ``127.0.0.1:PORT`` listens on loopback only — unless ``bind`` or the environment variable
    ``JAX_COORDINATOR_BIND_ADDRESS`` says otherwise (JAX alone would bind every interface).
    A process that stops sending heartbeats for ``heartbeat_timeout`` seconds (default
    ``JBP_HEARTBEAT_TIMEOUT`` or 30) ends the others.
    """
    host, port = _split_address(coordinator)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if bind is None:
        bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS")
    if bind is None:
        try:
            ipaddress.IPv6Address(host.strip("[]"))
            bind = f"[{host.strip('[]')}]:{port}"
        except ValueError:
            bind = f"{host}:{port}"
    hb = heartbeat_timeout or _env_seconds("JBP_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT)
    init_timeout = _env_seconds("JBP_INIT_TIMEOUT", INIT_TIMEOUT)
    if process_id != 0:
        # JAX's client aborts the whole process (a C++ fatal error) when it cannot connect;
        # waiting for the port first turns the common case into one clear message.
        _wait_for_port(host.strip("[]"), port, init_timeout, process_id, num_processes)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            coordinator_bind_address=bind if process_id == 0 else None,
            initialization_timeout=init_timeout,
            heartbeat_timeout_seconds=hb,
        )
    except Exception as e:  # the runtime's errors are long; keep the first line
        raise PeerError(
            f"process {process_id} of {num_processes} could not join the run at {coordinator}: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


def _wait_for_port(host, port, timeout, process_id, num_processes):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as e:
            if time.monotonic() > deadline:
                raise PeerError(
                    f"process {process_id} of {num_processes} could not reach the coordinator at "
                    f"{host}:{port} within {timeout} s ({e.strerror or e}); start process 0 "
                    f"with the same --coordinator, or check the address"
                ) from None
            time.sleep(0.2)


def make_mesh(devices=None):
    """A 1-D mesh, axis ``"batch"``, over ``devices`` devices (default: all of them).

    Devices are ordered by process, so each process owns one contiguous block of every
    batch. In a multi-process run the mesh must span every device of every process.
    """
    check_args(devices, "shard_map")
    every = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    n = len(every) if devices is None else devices
    if n > len(every):
        raise ValueError(
            f"devices={n} but JAX sees {len(every)} {every[0].platform} device(s); on CPU, "
            f"simulate more with jax.config.update('jax_num_cpu_devices', {n}) before JAX "
            f"starts (the command line does this for --devices)"
        )
    if jax.process_count() > 1 and n != len(every):
        raise ValueError(
            f"a multi-process run uses every device: devices={n} but the {jax.process_count()} "
            f"processes have {len(every)} in all"
        )
    return jax.make_mesh(
        (n,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,), devices=every[:n]
    )


# --------------------------------------------------------------- the step
def sharded_grad(g, axis_name=AXIS):
    """Turn a per-shard ``g(params, mstate, x, y, mask, key) -> (loss, grads, mstate)`` into the
    global masked mean.

    ``g`` is traced inside :func:`jbp.layers.batch_axis`, so the loss head divides by the
    whole batch's count Σmask (a psum) and each device's loss and gradients are its *share*
    of the global mean: one psum adds them up. (Weighting per-device means by their row
    counts gives the same for layers that treat examples apart, but not for BatchNorm, whose
    global statistics make every device's gradient depend on every device's rows.)

    A model state (running statistics) is averaged over the devices, weighted by their real
    rows, so it stays replicated.
    """

    def step_grad(params, mstate, xb, yb, mb, key):
        # Differentiate w.r.t. a per-device ("varying") copy: with autodiff, the gradient of a
        # replicated input inside shard_map would otherwise be summed over devices already.
        params = jax.lax.pcast(params, axis_name, to="varying")
        with batch_axis(axis_name):
            loss, grads, mstate = g(params, mstate, xb, yb, mb, key)
        n = jnp.sum(mb)
        floats = [t for t in jax.tree.leaves(mstate) if jnp.issubdtype(t.dtype, jnp.inexact)]
        weigh = lambda t: n.astype(t.dtype) * t  # noqa: E731
        tot, loss, grads, ns = jax.lax.psum((n, loss, grads, [weigh(t) for t in floats]), axis_name)
        inv = 1 / jnp.maximum(tot, 1)
        averaged = iter([t * inv.astype(t.dtype) for t in ns])
        mstate = jax.tree.map(  # integer leaves (counters) agree on every device: take the max
            lambda t: (
                next(averaged)
                if jnp.issubdtype(t.dtype, jnp.inexact)
                else jax.lax.pmax(t, axis_name)
            ),
            mstate,
        )
        return loss, grads, mstate

    return step_grad


# ------------------------------------------------------------- the batches
def layout(n, batch_size, n_dev):
    """``(batches, B, c)``: B real rows per batch (as the engine), c = ⌈B/N⌉ rows per device."""
    nb, b = engine.batch_layout(n, batch_size)
    return nb, b, -(-b // n_dev)


def local_indices(perm, batch_size, n_dev, lo, hi):
    """Rows of the training set for global batch columns ``[lo, hi)`` of every batch.

    Column j of batch i holds example ``perm[i·B + j]`` when ``j < B`` and that position is
    inside the epoch, and is padding (mask 0) otherwise — the engine's batches, each padded
    on the right to ``N·c`` columns. Returns ``(idx, mask)`` of shape ``(batches, hi − lo)``.
    """
    n = perm.shape[0]
    nb, b, _ = layout(n, batch_size, n_dev)
    cols = np.arange(lo, hi)
    pos = np.arange(nb)[:, None] * b + cols[None, :]
    real = (cols[None, :] < b) & (pos < n)
    idx = np.where(real, perm[np.minimum(pos, n - 1)], 0)
    return idx, real


@functools.partial(jax.jit, static_argnums=1)
def _permutation(key_data, n):
    # The same draw as train.make_epoch: split the state's key, permute with the second half.
    _, sub = jax.random.split(jax.random.wrap_key_data(key_data))
    return jax.random.permutation(sub, n)


# ------------------------------------------------------------ the program
def make_epoch_fn(
    model,
    optimizer,
    batch_size,
    devices=None,
    parallel="shard_map",
    backward="manual",
    grad_norms=False,
):
    """Build ``epoch(state, x, y, x_test, y_test) -> (state, metrics)`` over a device mesh.

    A drop-in for the engine's epoch program (``jbp.fit(..., epoch_fn=...)``; ``fit`` builds
    it for ``devices=``): same shuffle, same batches, same metrics, same parameters up to
    floating-point summation order. The state comes back replicated over the mesh.
    """
    check_args(devices, parallel)
    mesh = make_mesh(devices)
    mesh_devices = list(mesh.devices.flat)
    n_dev = len(mesh_devices)
    mine = [i for i, d in enumerate(mesh_devices) if d.process_index == jax.process_index()]
    first, n_local = mine[0], len(mine)
    run = engine.make_epoch_on_batches(
        model,
        optimizer,
        step_grad=sharded_grad(engine.grad_fn(model, backward)),
        axis_name=AXIS,
        grad_norms=grad_norms,
    )

    replicated = NamedSharding(mesh, P())
    by_column = NamedSharding(mesh, P(None, AXIS))
    if parallel == "shard_map":
        specs = (P(), P(None, AXIS), P(None, AXIS), P(None, AXIS), P(), P())
        program = jax.jit(jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P()))
    else:
        program = jax.pmap(
            run,
            axis_name=AXIS,
            in_axes=(None, 0, 0, 0, None, None),
            out_axes=None,
            devices=mesh_devices,
        )
    cache = {}

    def host(a):  # one host copy of the training set per process, kept across epochs
        if cache.get(id(a), (None,))[0] is not a:
            cache[id(a)] = (a, np.asarray(a))
        return cache[id(a)][1]

    def place(tree):  # replicate over the mesh (a no-op for what is already there)
        def one(a):
            if isinstance(a, jax.Array) and a.sharding == replicated:
                return a
            return jax.make_array_from_process_local_data(replicated, np.asarray(a))

        return jax.tree.map(one, tree)

    def epoch(state, x, y, x_test, y_test):
        xh, yh = host(x), host(y)
        nb, _, c = layout(xh.shape[0], batch_size, n_dev)
        perm = np.asarray(_permutation(np.asarray(state.key), xh.shape[0]))
        idx, real = local_indices(perm, batch_size, n_dev, first * c, (first + n_local) * c)
        # This process's share of every batch, and nothing more.
        mdt = xh.dtype if np.issubdtype(xh.dtype, np.floating) else np.float32
        xb, yb, mb = xh[idx], yh[idx], real.astype(mdt)
        if parallel == "shard_map":
            xb, yb, mb = (
                jax.make_array_from_process_local_data(by_column, a, (nb, n_dev * c) + a.shape[2:])
                for a in (xb, yb, mb)
            )
            args = (place(state), xb, yb, mb, place(x_test), place(y_test))
        else:  # pmap: a leading axis over this process's devices, (local devices, nb, c, …)
            xb, yb, mb = (
                np.moveaxis(a.reshape((nb, n_local, c) + a.shape[2:]), 1, 0) for a in (xb, yb, mb)
            )
            args = (state, xb, yb, mb, x_test, y_test)
        if jax.process_count() == 1:
            return program(*args)
        try:
            return jax.block_until_ready(program(*args))
        except Exception as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PeerError(
                f"process {jax.process_index()} of {jax.process_count()}: a collective failed, "
                f"most likely because another process died or was stopped ({first_line}); "
                f"restart every process with --resume to continue from the last checkpoint"
            ) from e

    epoch.mesh = mesh
    return epoch
