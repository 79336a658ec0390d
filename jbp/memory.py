"""Will it fit? A run's memory estimated from shapes alone, and refused before it is built.

``--layers _,100000000,_`` asks for 7.5 billion parameters: allocating them would take the
machine down (or die with an allocator's traceback) long after the command was typed.
:func:`check_fits` estimates, without allocating anything (``jax.eval_shape``), what a
training state holds — the parameters, the optimizer's moments and the model's state, in
their dtypes — and raises ``ValueError`` with the estimate when it exceeds the memory
available: the accelerator's (``memory_stats()["bytes_limit"]``) on a GPU or TPU, else the
host's available RAM (``psutil``, when installed), else its physical RAM (``sysconf``).

The estimate is a floor, not the peak: training also holds gradients, activations and the
previous epoch's state, so a run that passes may still be large. Refusing only what cannot
possibly fit never refuses a run that would have worked.
"""

import math
import os

import jax


def _fmt(n):
    """``1.5 GB``-style sizes (powers of 1000, as free and df print them)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def available():
    """``(bytes, where)``: the memory a run's arrays can use, and what it is."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        try:
            limit = (dev.memory_stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - a backend without statistics: fall back to RAM
            limit = None
        if limit:
            return int(limit), f"the memory of {dev.device_kind}"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available RAM"
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return int(pages), "physical RAM"


def tree_bytes(tree):
    """Bytes of every leaf of an (abstract or concrete) pytree."""
    return sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize
        for leaf in jax.tree.leaves(tree)
        if hasattr(leaf, "shape")
    )


def state_bytes(model, optimizer, dtype):
    """``(total, params)``: bytes of a fresh training state and of its parameters alone."""
    from jbp.epoch import init_state

    abstract = jax.eval_shape(
        lambda: init_state(model, optimizer, jax.random.key(0), dtype)
    )  # shapes only: nothing is allocated
    return tree_bytes(abstract), tree_bytes(abstract.params)


def check_bytes(need, what, detail="", advice="use a smaller model"):
    """Raise ``ValueError`` if ``need`` bytes exceed :func:`available`; ``what`` names them."""
    have, where = available()
    if need > have:
        raise ValueError(
            f"{what} need about {_fmt(need)}{detail}, more than the {_fmt(have)} of {where}: "
            f"refused before anything is built — {advice}"
        )


def check_fits(model, optimizer, dtype, copies=1):
    """Refuse a model whose parameters and optimizer state cannot fit (see the module).

    ``copies``: how many replicas share that memory (N simulated CPU devices all live in the
    host's memory; accelerators each have their own, so 1 there).
    """
    total, params = state_bytes(model, optimizer, dtype)
    itemsize = jax.numpy.dtype(dtype).itemsize
    n = params // itemsize
    detail = (
        f" ({n:,} parameters × {itemsize} bytes = {_fmt(params)}, and {_fmt(total - params)} "
        f"of optimizer state"
    )
    detail += f"; × {copies} devices' replicas)" if copies > 1 else ")"
    check_bytes(total * copies, "the parameters and optimizer state", detail)
