"""Small helpers shared by every module: argument validators, the tree hash, finiteness,
and the one-line form of an operating-system error.

The validators run on the host, outside ``jit``, on the values a user passed. Each one names
the argument in its message (``"keep must be an integer >= 1, got keep=True"``) and refuses a
``bool`` where a number is expected — ``True`` is an ``int`` to Python but never a sensible
count, rate or width. ``owner`` prefixes the message with the class or function that took the
argument (``"Conv features must be …"``).
"""

import hashlib
import math
import numbers
import os

import jax
import jax.numpy as jnp
import numpy as np


def is_integer(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_real(value) -> bool:
    """A real number (Python or NumPy, integers included), not a bool."""
    return isinstance(value, (numbers.Real, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _prefix(owner):
    return f"{owner} " if owner else ""


#: the largest int32: the epoch and step counters of a TrainState are int32
INT32_MAX = 2**31 - 1
#: the largest seed whose stream is its own: jax.random.key keeps 32 bits without x64
SEED_MAX = 2**32 - 1


def integer(name, value, *, minimum=1, maximum=None, owner="", message=None) -> int:
    """``value`` as an ``int`` if it is an integer in ``minimum … maximum``; else ``ValueError``.

    ``maximum=None``: no upper bound. The message names the accepted range.
    """
    if not is_integer(value) or value < minimum or (maximum is not None and value > maximum):
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        most = "" if maximum is None else f" (accepted: {minimum} … {maximum})"
        raise ValueError(
            message or f"{_prefix(owner)}{name} must be {what}, got {name}={value!r}{most}"
        )
    return int(value)


def real(
    name, value, *, low=None, high=None, low_open=False, high_open=False, owner="", message=None
) -> float:
    """``value`` as a ``float`` if it is a finite real in the given interval; else ``ValueError``.

    ``low``/``high`` bound the interval (``None``: unbounded); ``*_open`` excludes the bound.
    """
    ok = is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(
            message
            or f"{_prefix(owner)}{name} must be {_interval(low, high, low_open, high_open)}"
            f", got {name}={value!r}"
        )
    return float(value)


def _interval(low, high, low_open, high_open):
    if low is None and high is None:
        return "a finite number"
    if high is None:
        return f"a number {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"a number {'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def flag(name, value, *, owner="") -> bool:
    """``value`` if it is ``True`` or ``False``; else ``ValueError``."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{_prefix(owner)}{name} must be True or False, got {name}={value!r}")
    return bool(value)


def choice(name, value, choices, *, owner="") -> str:
    """``value`` if it is one of ``choices``; else ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{_prefix(owner)}{name} must be one of {', '.join(choices)}, got {name}={value!r}"
        )
    return value


def key_name(k) -> str:
    """One pytree path key as text: a dict key, a sequence index or an attribute name."""
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_sha256(tree) -> str:
    """SHA-256 of a pytree's leaves' bytes, in tree order: equal hashes ⇔ equal bits."""
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()


def rel_diff(a, b) -> float:
    """‖a − b‖₂ / (‖a‖₂ + ‖b‖₂) in float64: 0 when both are zero, NaN when either has a NaN.

    Scale-free (1 means unrelated), the measure of every gradient check in jbp.
    """
    a = np.ravel(np.asarray(a, np.float64))
    b = np.ravel(np.asarray(b, np.float64))
    den = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if den == 0 else float(np.linalg.norm(a - b) / den)


def all_finite(tree) -> jax.Array:
    """True iff every element of every leaf is finite — one scalar, usable under ``jit``.

    A float sum is finite iff no element is ±inf or NaN (an overflow of the sum itself would
    need values near the dtype's maximum, which training never keeps); float sums vectorise
    where boolean ``isfinite``-and reductions do not.
    """
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.isfinite(sum((jnp.sum(x) for x in leaves), jnp.asarray(0.0)))


class PathError(ValueError):
    """A path that cannot be used, found before any work is done: ``<path>: <reason>``."""

    def __init__(self, path, reason):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def os_reason(err) -> str:
    """The reason an ``OSError`` gives, without its errno and path: ``No space left on device``."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def os_message(err, path=None) -> str:
    """``<path>: <reason>`` for an ``OSError``: the file it names (else ``path``) and why."""
    where = getattr(err, "filename", None) or path
    return f"{os.fsdecode(where)}: {os_reason(err)}" if where else os_reason(err)
