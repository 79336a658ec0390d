"""jbp.memory: a run's state estimated from shapes alone, and refused when it cannot fit."""

import jax.numpy as jnp
import pytest

import jbp
from jbp import memory


def test_the_estimate_is_the_state_exactly_and_allocates_nothing():
    net = jbp.MLP((64, 100_000_000, 10))  # 7.5e9 parameters: only their shapes exist
    total, params = memory.state_bytes(net, jbp.optim.adam(1e-3), jnp.float32)
    n = 64 * 10**8 + 10**8 + 10**9 + 10
    assert params == 4 * n
    assert total - 3 * params < 64  # adam: two moments, plus its scalar counters


def test_a_model_that_cannot_fit_is_refused_with_the_estimate(monkeypatch):
    monkeypatch.setattr(memory, "available", lambda: (10_000, "available RAM"))
    net = jbp.MLP((64, 30, 10))  # 2 260 parameters: 9.0 kB, 27.1 kB with adam
    memory.check_fits(net, jbp.optim.sgd(0.1), jnp.float32)  # sgd: 9.0 kB fits in 10 kB
    with pytest.raises(ValueError, match=r"need about 27.1 kB \(2,260 parameters × 4 bytes = "
                       r"9.0 kB, and 18.1 kB of optimizer state\), more than the 10.0 kB of "
                       r"available RAM"):  # fmt: skip
        memory.check_fits(net, jbp.optim.adam(1e-3), jnp.float32)
    with pytest.raises(ValueError, match=r"need about 18.1 kB .*; × 2 devices' replicas\)"):
        memory.check_fits(net, jbp.optim.sgd(0.1), jnp.float32, copies=2)  # 2 × 9.0 kB


def test_available_memory_is_positive():
    have, where = memory.available()
    assert have > 0 and where
