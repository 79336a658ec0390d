"""jbp.averages.ewma: hand values, bias correction, the 1/(1−β) window, jit, argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jbp.averages import ewma


def test_hand_values():
    # v₁ = 0.5·1 = 0.5, v₂ = 0.5·0.5 + 0.5·2 = 1.25, v₃ = 0.5·1.25 + 0.5·3 = 2.125
    np.testing.assert_allclose(ewma(jnp.array([1.0, 2.0, 3.0]), 0.5), [0.5, 1.25, 2.125])
    # corrected: / (1 − 0.5ᵗ) = / 0.5, 0.75, 0.875
    np.testing.assert_allclose(
        ewma(jnp.array([1.0, 2.0, 3.0]), 0.5, bias_correction=True),
        [1.0, 1.25 / 0.75, 2.125 / 0.875],
        rtol=1e-14,
    )


def test_matches_a_python_loop():
    theta = np.asarray(jax.random.normal(jax.random.key(0), (50,)))
    v, expected = 0.0, []
    for x in theta:
        v = 0.9 * v + 0.1 * x
        expected.append(v)
    np.testing.assert_allclose(ewma(theta, 0.9), expected, rtol=1e-13)


def test_bias_corrected_first_value_is_theta1_and_uncorrected_starts_near_zero():
    theta = 10.0 + jax.random.normal(jax.random.key(1), (100,))
    corrected = ewma(theta, 0.98, bias_correction=True)
    raw = ewma(theta, 0.98)
    assert float(corrected[0]) == pytest.approx(float(theta[0]), rel=1e-14)
    assert float(raw[0]) == pytest.approx(0.02 * float(theta[0]))  # far below ~10
    assert float(raw[9]) < 2.0  # still biased after 10 steps ...
    assert abs(float(corrected[9]) - 10.0) < 1.5  # ... while the corrected one is on target
    assert abs(float(raw[-1]) - float(corrected[-1])) < 0.2 * 10.0  # the bias fades with t


@pytest.mark.parametrize("beta", [0.9, 0.98])
def test_window_is_about_one_over_one_minus_beta(beta):
    n = round(1 / (1 - beta))
    # step response: after n steps of a constant 1, vₙ = 1 − βⁿ ≈ 1 − 1/e
    v = ewma(jnp.ones(5 * n), beta)
    assert float(v[n - 1]) == pytest.approx(1 - np.exp(-1), abs=0.03)
    # impulse response: a value's weight has fallen by ≈ 1/e after n steps
    w = ewma(jnp.zeros(n + 1).at[0].set(1.0), beta)
    assert float(w[n] / w[0]) == pytest.approx(np.exp(-1), abs=0.03)


def test_trailing_axes_jit_and_dtypes():
    series = jax.random.normal(jax.random.key(2), (20, 3, 2))
    out = jax.jit(ewma, static_argnums=(1, 2))(series, 0.8, True)
    assert out.shape == series.shape
    for i in range(3):
        np.testing.assert_allclose(out[:, i, 1], ewma(series[:, i, 1], 0.8, True), rtol=1e-13)
    assert ewma(jnp.arange(4), 0.5).dtype == jnp.float64  # integers promoted
    assert ewma(jnp.ones(4, jnp.float32), 0.5).dtype == jnp.float32
    # β may also be traced
    traced = jax.jit(ewma)(series[:, 0, 0], 0.8)
    np.testing.assert_allclose(traced, ewma(series[:, 0, 0], 0.8), rtol=1e-13)


@pytest.mark.parametrize("beta", [1.0, -0.1, 2])
def test_bad_beta_refused(beta):
    with pytest.raises(ValueError, match=rf"beta must be in \[0, 1\), got beta={beta}"):
        ewma(jnp.ones(3), beta)


def test_scalar_series_refused():
    with pytest.raises(ValueError, match="leading time axis"):
        ewma(jnp.asarray(1.0), 0.5)
