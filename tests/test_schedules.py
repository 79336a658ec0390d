"""jbp.schedules: closed forms at many epochs and steps, jit, by-name, argument checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbp import schedules

SPE = 7  # steps per epoch
STEPS = list(range(0, 60 * SPE, 3))  # many epochs, several steps within each


def _epoch(step):
    return step // SPE


_CASES = {
    "constant": (schedules.constant(0.3), lambda s: 0.3),
    "inverse_time": (
        schedules.inverse_time(0.5, 0.2, steps_per_epoch=SPE),
        lambda s: 0.5 / (1 + 0.2 * _epoch(s)),
    ),
    "inverse_time_interval": (
        schedules.inverse_time(0.5, 1.0, steps_per_epoch=SPE, time_interval=4),
        lambda s: 0.5 / (1 + 1.0 * math.floor(_epoch(s) / 4)),
    ),
    "exponential": (
        schedules.exponential(0.1, 0.95, steps_per_epoch=SPE),
        lambda s: 0.1 * 0.95 ** _epoch(s),
    ),
    "inverse_sqrt": (
        schedules.inverse_sqrt(0.2, k=3.0, steps_per_epoch=SPE),
        lambda s: 0.2 * 3.0 / math.sqrt(_epoch(s) + 1),
    ),
    "staircase": (
        schedules.staircase(1.0, 0.5, every_epochs=10, steps_per_epoch=SPE),
        lambda s: 1.0 * 0.5 ** math.floor(_epoch(s) / 10),
    ),
    "piecewise": (
        schedules.piecewise([5, 20, 30], [1.0, 0.3, 0.1, 0.01], steps_per_epoch=SPE),
        lambda s: [1.0, 0.3, 0.1, 0.01][sum(_epoch(s) >= b for b in (5, 20, 30))],
    ),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_closed_form(name):
    schedule, closed_form = _CASES[name]
    expected = [closed_form(s) for s in STEPS]
    # Python ints, one at a time
    np.testing.assert_allclose([float(schedule(s)) for s in STEPS], expected, rtol=1e-13)
    # an int32 traced step, under jit and vmap
    traced = jax.jit(jax.vmap(schedule))(jnp.asarray(STEPS, dtype=jnp.int32))
    np.testing.assert_allclose(traced, expected, rtol=1e-13)
    assert jnp.asarray(schedule(3)).dtype == jnp.float64  # x64 is on in the tests


def test_within_an_epoch_the_lr_is_constant():
    s = schedules.exponential(1.0, 0.5, steps_per_epoch=4)
    assert [float(s(k)) for k in range(9)] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_piecewise_boundaries():
    s = schedules.piecewise([10, 20], [1.0, 0.5, 0.25])
    assert [float(s(e)) for e in (0, 9, 10, 19, 20, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert float(schedules.piecewise([], [0.7])(123)) == 0.7


def test_float32_without_x64():
    with jax.enable_x64(False):
        s = schedules.exponential(0.1, 0.9, steps_per_epoch=2)
        assert s(jnp.asarray(5, jnp.int32)).dtype == jnp.float32
        assert schedules.constant(0.1)(3).dtype == jnp.float32


def test_get_by_name():
    assert schedules.NAMES == (
        "constant", "inverse-time", "exponential", "inverse-sqrt", "staircase", "piecewise",
    )  # fmt: skip
    for name in schedules.NAMES:
        assert float(schedules.get(name, 0.1, steps_per_epoch=3)(0)) == pytest.approx(0.1)
    s = schedules.get("inverse_time", 0.1, steps_per_epoch=3, decay_rate=0.5, time_interval=2)
    assert float(s(12)) == pytest.approx(0.1 / (1 + 0.5 * 2))
    s = schedules.get("exponential", 0.1, steps_per_epoch=3, base=0.5)
    assert float(s(6)) == pytest.approx(0.025)
    s = schedules.get("piecewise", 0.1, boundaries_epochs=[2, 4], values=[0.01, 0.001])
    assert [float(s(e)) for e in (1, 2, 4)] == pytest.approx([0.1, 0.01, 0.001])


_BAD = [
    (lambda: schedules.constant(0.0), r"lr must be a finite number > 0, got lr=0.0"),
    (lambda: schedules.exponential(-0.1, 0.9), r"lr0 must be a finite number > 0, got lr0=-0.1"),
    (lambda: schedules.exponential(0.1, 0.0), r"base must be a finite number > 0, got base=0.0"),
    (lambda: schedules.exponential(0.1, -2), r"base must be a finite number > 0, got base=-2"),
    (
        lambda: schedules.staircase(0.1, 0.0, 5),
        r"factor must be a finite number > 0, got factor=0.0",
    ),
    (
        lambda: schedules.staircase(0.1, 0.5, 0),
        r"every_epochs must be an integer >= 1, got every_epochs=0",
    ),
    (
        lambda: schedules.inverse_time(0.1, -1.0),
        r"decay_rate must be a finite number >= 0, got decay_rate=-1.0",
    ),
    (
        lambda: schedules.inverse_time(0.1, 1.0, time_interval=0),
        r"time_interval must be an integer >= 1, got time_interval=0",
    ),
    (
        lambda: schedules.inverse_sqrt(0.1, steps_per_epoch=0),
        r"steps_per_epoch must be an integer >= 1, got steps_per_epoch=0",
    ),
    (
        lambda: schedules.inverse_sqrt(0.1, steps_per_epoch=2.5),
        r"steps_per_epoch must be an integer >= 1, got steps_per_epoch=2.5",
    ),
    (lambda: schedules.inverse_sqrt(0.1, k=0.0), r"k must be a finite number > 0, got k=0.0"),
    (
        lambda: schedules.piecewise([20, 10], [1.0, 0.5, 0.1]),
        r"boundaries_epochs must be strictly increasing, got boundaries_epochs=\[20, 10\]",
    ),
    (
        lambda: schedules.piecewise([10, 20], [1.0, 0.5]),
        r"values must have len\(boundaries_epochs\) \+ 1 = 3 entries, got values=\[1.0, 0.5\]",
    ),
    (
        lambda: schedules.piecewise([10], [1.0, -0.5]),
        r"values must all be finite numbers > 0, got values=\[1.0, -0.5\]",
    ),
    (
        lambda: schedules.get("cosine", 0.1),
        r"unknown schedule 'cosine'; valid names: constant, inverse-time",
    ),
    (
        lambda: schedules.get("exponential", 0.1, factor=0.5),
        r"schedule 'exponential' takes no parameter 'factor'; it takes: base",
    ),
    (
        lambda: schedules.get("piecewise", 0.1, boundaries_epochs=[2], values=[]),
        r"one value \(the lr after it\) per boundary",
    ),
]


@pytest.mark.parametrize("build, message", _BAD, ids=[m for _, m in _BAD])
def test_bad_arguments_refused(build, message):
    with pytest.raises(ValueError, match=message):
        build()
