"""jbp.winograd: the F(2, 3) identity in 1-D, and the 2-D convolution and its backward equal to
``lax.conv_general_dilated`` and its ``jax.vjp`` (float64, to rounding) for every padding and
for input sizes that do and do not fill whole 2×2 output tiles."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jbp import winograd
from jbp.windows import explicit_pads


def test_one_dimensional_minimal_filtering_identity():
    """y = Aᵀ[(G·g) ⊙ (Bᵀ·d)] is the 2-output, 3-tap correlation yᵢ = Σᵣ dᵢ₊ᵣ·gᵣ."""
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, g = rng.standard_normal(4), rng.standard_normal(3)
        y = winograd.AT @ ((winograd.G @ g) * (winograd.BT @ d))
        np.testing.assert_allclose(y, [d[0:3] @ g, d[1:4] @ g], rtol=1e-14)


def test_backward_identities_by_transposition():
    """dW = Gᵀ[(A·dy) ⊙ (Bᵀ·d)] and dd = B[(A·dy) ⊙ (G·g)] in 1-D."""
    rng = np.random.default_rng(1)
    d, g, dy = rng.standard_normal(4), rng.standard_normal(3), rng.standard_normal(2)
    a = winograd.AT.T @ dy
    dw = winograd.G.T @ (a * (winograd.BT @ d))
    dd = winograd.BT.T @ (a * (winograd.G @ g))
    np.testing.assert_allclose(dw, [dy @ d[r : r + 2] for r in range(3)], rtol=1e-14)
    ref = np.zeros(4)
    for i, r in itertools.product(range(2), range(3)):
        ref[i + r] += dy[i] * g[r]
    np.testing.assert_allclose(dd, ref, rtol=1e-14, atol=1e-15)


def _fits(hw, padding):
    pads = explicit_pads(padding, hw, (3, 3), (1, 1))
    return all(n + lo + hi >= 3 for n, (lo, hi) in zip(hw, pads, strict=True))


CASES = [
    (hw, padding)
    for hw in [(14, 14), (7, 9), (5, 4), (3, 3), (1, 1), (2, 6)]
    for padding in ["SAME", "VALID", ((0, 2), (1, 0)), ((2, 1), (0, 3))]
    if _fits(hw, padding)
]


@pytest.mark.parametrize(("hw", "padding"), CASES, ids=str)
def test_conv_and_backward_equal_lax_and_its_vjp(hw, padding):
    pads = explicit_pads(padding, hw, (3, 3), (1, 1))
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (2, *hw, 3), jnp.float64)
        w = jax.random.normal(keys[1], (3, 3, 3, 4), jnp.float64)

        def conv(w, x):
            dn = ("NHWC", "HWIO", "NHWC")
            return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=dn)

        ref, vjp = jax.vjp(conv, w, x)
        y, v = jax.jit(winograd.conv, static_argnums=2)(x, w, pads)
        dy = jax.random.normal(keys[2], ref.shape, jnp.float64)
        backward = jax.jit(winograd.conv_backward, static_argnums=(3, 4))
        dw, dx = backward(v, w, dy, pads, x.shape)
        gw, gx = vjp(dy)
        assert y.shape == ref.shape and dw.shape == w.shape and dx.shape == x.shape
        for got, want in ((y, ref), (dw, gw), (dx, gx)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
