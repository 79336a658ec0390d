"""Learning-rate schedules: functions of the step count, aware of epochs.

A schedule is a callable ``schedule(step) -> lr``. ``step`` is the number of
optimizer steps taken so far (a Python int or an int32 array, traced or not; the
optimizers in :mod:`jbp.optim` call it with their int32 ``count`` *before*
incrementing it, so the first update uses ``schedule(0)``). Every schedule is a
function of the epoch,

    epoch = step // steps_per_epoch,

so "decay the learning rate each epoch" means what the textbook means, whatever
the mini-batch size. The result is a scalar array of the default float dtype
(float32, or float64 under ``jax_enable_x64``).

Arguments are checked when the schedule is built; a bad one raises ``ValueError``
naming the value given, e.g. ``lr0 must be > 0, got lr0=-0.1``.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jbp import options as _options
from jbp.util import integer, is_integer, is_real, real

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


# --- argument checks (run once, outside jit) ---


def _positive(name: str, value) -> None:
    real(
        name,
        value,
        low=0,
        low_open=True,
        message=f"{name} must be a finite number > 0, got {name}={value!r}",
    )


def _non_negative(name: str, value) -> None:
    real(name, value, low=0, message=f"{name} must be a finite number >= 0, got {name}={value!r}")


def _count(name: str, value) -> None:
    integer(name, value, message=f"{name} must be an integer >= 1, got {name}={value!r}")


def _epoch(step, steps_per_epoch: int) -> jax.Array:
    return jnp.asarray(step) // steps_per_epoch


def _float(x) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


# --- schedules ---


def constant(lr: float) -> Schedule:
    """The same learning rate at every step: ``lr``."""
    _positive("lr", lr)
    return lambda step: jnp.full(jnp.shape(step), lr, dtype=jnp.result_type(float))


def inverse_time(
    lr0: float, decay_rate: float = 1.0, steps_per_epoch: int = 1, time_interval: int = 1
) -> Schedule:
    """Inverse-time decay: ``lr0 / (1 + decay_rate · ⌊epoch / time_interval⌋)``.

    The seed's ``α = α₀ / (1 + decayRate · epochNum)``; with ``time_interval`` > 1 it is
    the deeplearning.ai ``schedule_lr_decay`` (the decay steps once every
    ``time_interval`` epochs).

    Example:
        >>> s = inverse_time(0.1, decay_rate=1.0, steps_per_epoch=10)
        >>> round(float(s(25)), 6)  # step 25 is in epoch 2: 0.1 / (1 + 1·2)
        0.033333
    """
    _positive("lr0", lr0)
    _non_negative("decay_rate", decay_rate)
    _count("steps_per_epoch", steps_per_epoch)
    _count("time_interval", time_interval)

    def schedule(step):
        k = _float(_epoch(step, steps_per_epoch) // time_interval)
        return lr0 / (1.0 + decay_rate * k)

    return schedule


def exponential(lr0: float, base: float = 0.95, steps_per_epoch: int = 1) -> Schedule:
    """Exponential decay: ``lr0 · base^epoch`` (e.g. ``base=0.95``)."""
    _positive("lr0", lr0)
    _positive("base", base)
    _count("steps_per_epoch", steps_per_epoch)

    def schedule(step):
        return lr0 * _float(base) ** _float(_epoch(step, steps_per_epoch))

    return schedule


def inverse_sqrt(lr0: float, k: float = 1.0, steps_per_epoch: int = 1) -> Schedule:
    """Inverse-square-root decay: ``lr0 · k / √(epoch + 1)``."""
    _positive("lr0", lr0)
    _positive("k", k)
    _count("steps_per_epoch", steps_per_epoch)

    def schedule(step):
        return lr0 * k / jnp.sqrt(_float(_epoch(step, steps_per_epoch)) + 1.0)

    return schedule


def staircase(
    lr0: float, factor: float = 0.5, every_epochs: int = 10, steps_per_epoch: int = 1
) -> Schedule:
    """Step decay: ``lr0 · factor^⌊epoch / every_epochs⌋`` (e.g. halve every 10 epochs)."""
    _positive("lr0", lr0)
    _positive("factor", factor)
    _count("every_epochs", every_epochs)
    _count("steps_per_epoch", steps_per_epoch)

    def schedule(step):
        n = _float(_epoch(step, steps_per_epoch) // every_epochs)
        return lr0 * _float(factor) ** n

    return schedule


def piecewise(
    boundaries_epochs: Sequence[int], values: Sequence[float], steps_per_epoch: int = 1
) -> Schedule:
    """Piecewise-constant ("manual") decay.

    ``values[i]`` applies while ``boundaries_epochs[i-1] <= epoch < boundaries_epochs[i]``:
    ``values[0]`` before the first boundary, ``values[-1]`` from the last one on, so
    ``len(values) == len(boundaries_epochs) + 1``.

    Example:
        >>> s = piecewise([10, 20], [1.0, 0.5, 0.25])
        >>> [float(s(e)) for e in (0, 9, 10, 19, 20, 100)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    bounds, values = list(boundaries_epochs), list(values)
    _count("steps_per_epoch", steps_per_epoch)
    if any(not is_integer(b) or b < 0 for b in bounds):
        raise ValueError(f"boundaries_epochs must be integers >= 0, got boundaries_epochs={bounds}")
    if any(a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
        raise ValueError(
            f"boundaries_epochs must be strictly increasing, got boundaries_epochs={bounds}"
        )
    if len(values) != len(bounds) + 1:
        raise ValueError(
            f"values must have len(boundaries_epochs) + 1 = {len(bounds) + 1} "
            f"entries, got values={values}"
        )
    for v in values:
        if not (is_real(v) and math.isfinite(v) and v > 0):
            raise ValueError(f"values must all be finite numbers > 0, got values={values}")
    bounds = jnp.asarray(bounds, dtype=jnp.int32)
    table = _float(values)

    def schedule(step):
        # index = how many boundaries the current epoch has reached
        i = jnp.sum(_epoch(step, steps_per_epoch) >= bounds)
        return table[i]

    return schedule


# --- by name (for the command line and run configurations) ---


def _piecewise_from(
    lr0: float,
    boundaries_epochs: Sequence[int] = (),
    values: Sequence[float] = (),
    steps_per_epoch: int = 1,
) -> Schedule:
    """:func:`piecewise` started at ``lr0``: ``values`` are the rates *after* each boundary.

    ``len(values) == len(boundaries_epochs)``; or ``len + 1`` values exactly as
    :func:`piecewise` takes them, whose first must then be ``lr0``.
    """
    boundaries, after = _listed(boundaries_epochs), _listed(values)
    if len(after) == len(boundaries) + 1:
        if after[0] != lr0:
            raise ValueError(
                f"schedule 'piecewise': values[0]={after[0]!r} is the initial learning rate, "
                f"but lr0={lr0!r}; give the same one, or only the values after each boundary"
            )
        after = after[1:]
    if len(after) != len(boundaries):
        raise ValueError(
            "schedule 'piecewise' needs one value (the lr after it) per boundary, got "
            f"boundaries_epochs={boundaries}, values={after}"
        )
    _positive("lr0", lr0)
    return piecewise(boundaries, [lr0, *after], steps_per_epoch)


def _listed(x):
    """A sequence as a list; one number (``boundaries_epochs=6`` from a spec) as ``[6]``."""
    return [x] if is_real(x) else list(x)


#: name -> builder; each takes ``lr0`` first and ``steps_per_epoch``; its other keyword
#: parameters (with their defaults) are the schedule's options — see :mod:`jbp.options`.
BUILDERS = {
    "constant": lambda lr0, steps_per_epoch=1: constant(lr0),
    "inverse-time": inverse_time,
    "exponential": exponential,
    "inverse-sqrt": inverse_sqrt,
    "staircase": staircase,
    "piecewise": _piecewise_from,
}
NAMES = tuple(BUILDERS)
RUN_SUPPLIED = ("lr0", "steps_per_epoch")  # given by the run, not options


def options(name: str) -> tuple:
    """The option names schedule ``name`` accepts (its builder's keyword parameters)."""
    key, fn = _options.lookup("schedule", name, BUILDERS)
    return _options.accepted(fn, RUN_SUPPLIED)


def get(name: str, lr0: float, steps_per_epoch: int = 1, **params) -> Schedule:
    """Build a schedule from its name, starting at ``lr0`` (for the command line).

    Names: ``constant``, ``inverse-time``, ``exponential``, ``inverse-sqrt``,
    ``staircase``, ``piecewise`` (``_`` may replace ``-``). ``params`` are the keyword
    parameters of the function of that name, with its defaults where omitted. For
    ``piecewise``, ``lr0`` applies before the first boundary and ``values`` lists the
    learning rate *after* each boundary (or, as :func:`piecewise` takes them, ``lr0``
    followed by those).

    Example:
        >>> s = get("exponential", 0.1, steps_per_epoch=100, base=0.9)
    """
    key, fn = _options.lookup("schedule", name, BUILDERS)
    _options.check_keys("schedule", key, params, options(key))
    return fn(lr0, steps_per_epoch=steps_per_epoch, **params)
