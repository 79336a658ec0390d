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

Several processes (:func:`jbp.distributed.initialize`; one per host, or several on one machine): every process
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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jbp import epoch as engine
from jbp.collectives import AXIS, psum_flat, sharded_grad  # noqa: F401 - re-exported
from jbp.distributed import PeerError, is_writer, peer_lost, setup  # noqa: F401 - re-exported
from jbp.util import choice, integer

MODES = ("shard_map", "pmap")


def check_args(devices, parallel):
    """Validate ``devices`` and ``parallel`` outside ``jit``."""
    if devices is not None:
        integer(
            "devices", devices, message=f"devices must be an integer >= 1, got devices={devices!r}"
        )
    choice("parallel", parallel, MODES)


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

    In one process the whole epoch stays on the devices, as in the plain engine: the data are
    replicated once, and each device draws the epoch's permutation from the state's key and
    gathers its own column of every batch inside the program — no host round trip per epoch.
    With several processes each process gathers its share on the host (its devices cannot
    see the others' copies) and hands it to ``jax.make_array_from_process_local_data``.
    """
    check_args(devices, parallel)
    mesh = make_mesh(devices)
    run = engine.make_epoch_on_batches(
        model,
        optimizer,
        step_grad=sharded_grad(
            engine.grad_fn(model, backward),
            coupled=bool(getattr(model, "batch_coupled", False)),
            n_dev=mesh.devices.size,
        ),
        # one device: nothing to sum over, so no axis — the epoch is the plain engine's
        axis_name=AXIS if mesh.devices.size > 1 else None,
        grad_norms=grad_norms,
    )
    if jax.process_count() == 1:
        epoch = _device_epoch(run, mesh, parallel, batch_size)
    else:
        epoch = _host_epoch(run, mesh, parallel, batch_size)
    epoch.mesh = mesh
    return epoch


def _replicator(mesh):
    """``place(tree)``: every array replicated over the mesh, each distinct input copied once
    (the training set is the same object every epoch: it is transferred the first time only)."""
    replicated = NamedSharding(mesh, P())
    copies = {}

    def one(a):
        if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(replicated, a.ndim):
            return a  # e.g. the state the last epoch returned: P(None, None) is P() here
        if copies.get(id(a), (None,))[0] is not a:
            copies[id(a)] = (a, jax.device_put(a, replicated))
        return copies[id(a)][1]

    return lambda tree: jax.tree.map(one, tree)


def device_batches(key_data, n, batch_size, n_dev, dtype):
    """This device's ``(idx, mask)`` of every batch, drawn on the device (inside the map).

    The plain engine's order (the same permutation of the same key), each batch padded on
    the right to ``N·c`` columns and cut into N blocks of c; device d takes block d.
    """
    nb, b, c = layout(n, batch_size, n_dev)
    _, sub = jax.random.split(jax.random.wrap_key_data(key_data))
    perm = jax.random.permutation(sub, n)
    # one device: block 0, a constant — the batches stay replicated (no varying values, so no
    # collective is needed to bring the step's results back; see sharded_grad)
    d = 0 if n_dev == 1 else jax.lax.axis_index(AXIS)
    cols = d * c + jnp.arange(c)
    pos = jnp.arange(nb)[:, None] * b + cols[None, :]
    real = (cols[None, :] < b) & (pos < n)
    return jnp.where(real, perm[jnp.minimum(pos, n - 1)], 0), real.astype(dtype)


def _device_epoch(run, mesh, parallel, batch_size):
    """One process: shuffle and gather on the devices (see :func:`make_epoch_fn`)."""
    n_dev = mesh.devices.size

    def local(state, x, y, x_test, y_test):
        mdt = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        idx, mb = device_batches(state.key, x.shape[0], batch_size, n_dev, mdt)
        return run(state, idx, None, mb, x_test, y_test, source=(x, y))

    place = _replicator(mesh)
    if parallel == "shard_map" or n_dev == 1:  # one device: nothing to map, either mode
        program = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P(), out_specs=P()))

        def epoch(state, x, y, x_test, y_test):
            return program(*place((state, x, y, x_test, y_test)))

    else:  # pmap maps over at least one argument: the device numbers (unused inside)
        ids = np.arange(n_dev)
        program = jax.pmap(lambda _, *a: local(*a), axis_name=AXIS, out_axes=None,
                           in_axes=(0, None, None, None, None, None),
                           devices=list(mesh.devices.flat))  # fmt: skip

        def epoch(state, x, y, x_test, y_test):
            return program(ids, *place((state, x, y, x_test, y_test)))

    epoch.program, epoch.place = program, place  # for inspection (the compiled HLO)
    return epoch


def _host_epoch(run, mesh, parallel, batch_size):
    """Several processes: each gathers its own share of every batch on the host."""
    mesh_devices = list(mesh.devices.flat)
    n_dev = len(mesh_devices)
    mine = [i for i, d in enumerate(mesh_devices) if d.process_index == jax.process_index()]
    first, n_local = mine[0], len(mine)
    by_column = NamedSharding(mesh, P(None, AXIS))
    program = _mapped(run, mesh, parallel)
    place = _replicator(mesh)
    cache = {}

    def host(a):  # one host copy of the training set per process, kept across epochs
        if cache.get(id(a), (None,))[0] is not a:
            cache[id(a)] = (a, np.asarray(a))
        return cache[id(a)][1]

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
        return _collective(program, args)

    return epoch


def _mapped(run, mesh, parallel):
    """``run`` mapped over the mesh: state and test set replicated, batches by column."""
    if parallel == "shard_map":
        specs = (P(), P(None, AXIS), P(None, AXIS), P(None, AXIS), P(), P())
        return jax.jit(jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=P()))
    return jax.pmap(
        run,
        axis_name=AXIS,
        in_axes=(None, 0, 0, 0, None, None),
        out_axes=None,
        devices=list(mesh.devices.flat),
    )


def _collective(program, args):
    """Run the mapped epoch; in a multi-process run, a failed collective is a PeerError."""
    if jax.process_count() == 1:
        return program(*args)
    try:
        return jax.block_until_ready(program(*args))
    except Exception as e:
        raise peer_lost(e) from e
