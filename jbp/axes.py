"""The batch split over devices, as layers see it while a training step is traced.

``jbp.parallel`` splits every mini-batch over a mapped axis (``shard_map`` or ``pmap``) and
traces the step inside these contexts, so a layer can act on the whole batch:

- :func:`batch_axis` (models that couple examples): batch statistics are summed over the
  axis (``lax.psum``), so N devices see the statistics of the whole batch (BatchNorm, the
  loss head's count);
- :func:`split_axis` (every model, set by :func:`batch_axis` too): random draws see the
  split, so Dropout draws the whole batch's masks and keeps its device's block
  (:func:`whole_batch_bernoulli`), and other stochastic layers get a key per device.
"""

import contextlib
import threading

import jax

_AXIS = threading.local()


@contextlib.contextmanager
def batch_axis(name):
    """While tracing inside it, the batch is split over the mapped axis ``name``.

    Batch-coupled layers (BatchNorm) read :func:`current_batch_axis` and sum their statistics
    over that axis (``lax.psum``), so N devices see the statistics of the whole batch, as one
    device would. ``jbp.parallel`` traces its epoch program inside ``batch_axis("batch")``.
    Inside it :func:`split_axis` holds too.
    """
    with _set(_AXIS, "name", name), split_axis(name):
        yield


@contextlib.contextmanager
def split_axis(name):
    """While tracing inside it, the batch is split over ``name`` (statistics may stay local).

    Stochastic layers read :func:`current_split_axis`: Dropout draws the whole batch's masks
    and keeps its device's block; other stochastic layers get a key per device
    (:func:`jbp.layers.call_forward`). Nested inside another split (per-example gradients,
    a ``vmap`` over a device's rows), the blocks are split again: block ``i`` of the inner
    axis within block ``d`` of the outer one is block ``d·size(inner) + i`` of the whole.
    """
    outer = current_split_axis()
    outer = () if outer is None else outer if isinstance(outer, tuple) else (outer,)
    names = name if not outer else outer if name in outer else (*outer, name)
    with _set(_AXIS, "split", names):
        yield


@contextlib.contextmanager
def _set(ns, attr, value):
    previous = getattr(ns, attr, None)
    setattr(ns, attr, value)
    try:
        yield
    finally:
        setattr(ns, attr, previous)


def current_batch_axis():
    """The mapped axis the batch statistics are summed over while tracing, or ``None``."""
    return getattr(_AXIS, "name", None)


def current_split_axis():
    """The mapped axis the batch is split over while tracing (a tuple of names, outermost
    first, when splits are nested), or ``None`` (one device)."""
    return getattr(_AXIS, "split", None)


def split_block():
    """``(index, count)``: this block's place among the blocks of the batch while tracing
    inside :func:`split_axis` (traced values; nested axes linearised, outermost major), or
    ``None`` outside it."""
    axis = current_split_axis()
    if axis is None:
        return None
    index, count = 0, 1
    for name in axis if isinstance(axis, tuple) else (axis,):
        size = jax.lax.axis_size(name)
        index, count = index * size + jax.lax.axis_index(name), count * size
    return index, count


def whole_batch_bernoulli(key, p, shape):
    """Bernoulli(p) draws of ``shape``; with the batch split over devices (N blocks of
    ``shape[0]`` rows), this device's block of the draws for all N·``shape[0]`` rows.

    Every device gets the same key and draws the whole batch; JAX's counter-based generator
    gives row r the same bits for any number of rows, so each example gets the mask it gets
    on one device (``--devices N`` ≡ one device, up to the order of the gradient sums).
    """
    block = split_block()
    if block is None:
        return jax.random.bernoulli(key, p, shape)
    index, n = block
    full = jax.random.bernoulli(key, p, (n * shape[0], *shape[1:]))
    return jax.lax.dynamic_slice_in_dim(full, index * shape[0], shape[0])
