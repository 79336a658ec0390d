"""jbp.util: the shared validators name the argument and refuse bools; hash and finiteness."""

import jax.numpy as jnp
import numpy as np
import pytest

from jbp import util


@pytest.mark.parametrize("bad", [True, False, 0, -3, 2.0, "3", None, np.bool_(True)])
def test_integer_refuses(bad):
    with pytest.raises(ValueError, match=r"keep must be a positive integer, got keep="):
        util.integer("keep", bad)


def test_integer_accepts_numpy_and_minimum():
    assert util.integer("n", np.int64(3)) == 3
    assert util.integer("seed", 0, minimum=0) == 0
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got seed=-1"):
        util.integer("seed", -1, minimum=0)
    with pytest.raises(ValueError, match="^Conv features must be"):
        util.integer("features", 0, owner="Conv")


def test_real_intervals():
    assert util.real("beta", 0, low=0, high=1, high_open=True) == 0.0
    for bad in (1.0, -0.1, True, float("nan"), float("inf"), "0.5"):
        with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got beta="):
            util.real("beta", bad, low=0, high=1, high_open=True)
    with pytest.raises(ValueError, match="lr must be a number > 0, got lr=0"):
        util.real("lr", 0, low=0, low_open=True)


def test_flag_and_choice():
    assert util.flag("use_bias", np.bool_(False)) is False
    with pytest.raises(ValueError, match="use_bias must be True or False, got use_bias=1"):
        util.flag("use_bias", 1)
    with pytest.raises(ValueError, match="dtype must be one of float32, float64, got dtype='f16'"):
        util.choice("dtype", "f16", ("float32", "float64"))


def test_tree_sha256_is_bitwise():
    a = {"w": jnp.arange(3.0), "b": jnp.zeros(2)}
    assert util.tree_sha256(a) == util.tree_sha256({"w": jnp.arange(3.0), "b": jnp.zeros(2)})
    assert util.tree_sha256(a) != util.tree_sha256({"w": jnp.arange(3.0), "b": -jnp.zeros(2)})


def test_all_finite_and_rel_diff():
    assert bool(util.all_finite({"a": jnp.ones(3), "i": jnp.arange(3)}))
    assert not bool(util.all_finite([jnp.ones(3), jnp.array([1.0, jnp.nan])]))
    assert util.rel_diff([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert util.rel_diff([0.0], [0.0]) == 0.0
    assert util.rel_diff([1.0], [-1.0]) == 1.0
    assert np.isnan(util.rel_diff([np.nan], [1.0]))
