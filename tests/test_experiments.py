"""The experiments' --quick modes: each writes its JSON and PNG and reproduces its claim.

Every experiment runs in-process on its CI-sized configuration, writing into a temporary
folder (the committed full-run results in experiments/results/ stay untouched). Only the
timing-free part of each claim is asserted; wall-clock comparisons are recorded, not tested.
"""

import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jbp  # noqa: E402
from experiments import (  # noqa: E402
    backprop_cost,
    common,
    ewma_bias,
    lr_decay,
    minibatch,
    optimizers,
    saddle_points,
)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def run_quick(module, out):
    """Run ``module.main(["--quick", ...])``; check both files exist and the JSON round-trips."""
    result = module.main(["--quick", "--out", str(out)])
    js, png = out / f"{module.NAME}.json", out / f"{module.NAME}.png"
    assert js.stat().st_size > 0 and png.stat().st_size > 10_000  # a real figure
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(js.read_text()) == result
    assert result["quick"] is True
    return result


def test_backprop_cost(out):
    r = run_quick(backprop_cost, out)
    c = r["claims"]
    # finite differences really evaluated C exactly n + 1 (forward) and 2n (central) times
    assert c["fd_forward_evals_is_n_plus_1"] and c["fd_central_evals_is_2n"]
    for row in r["rows"]:
        n = row["n_params"]
        assert row["fd_forward_evals_counted"] == n + 1
        assert row["fd_central_evals_counted"] == 2 * n
        assert row["fd_central_rel_diff"] < 1e-7  # and agree with the manual backward
    assert c["fd_matches_backprop"]
    assert [row["n_params"] for row in r["rows"]] == [17, 58, 340]


def test_ewma_bias(out):
    r = ewma_bias.main(["--quick", "--out", str(out)])
    for beta in (0.9, 0.98):
        c = r["claims"][f"beta={beta}"]
        assert all(c.values()), c
        raw = r["results"][f"beta={beta}"]
        assert raw["v_1_over_theta_1"] == pytest.approx(1 - beta, rel=1e-4)  # starts near 0
        assert raw["window_measured"] == round(1 / (1 - beta))
    assert r["claims"]["larger_beta_smoother"]


def test_optimizers_moons(out):
    r = run_quick(optimizers, out)
    m = r["moons"]
    # the notebook's table: GD > 71 %, Adam > 94 % (here: mean over seeds)
    assert m["adam"]["train_accuracy_mean"] - m["sgd"]["train_accuracy_mean"] >= 0.10
    assert m["adam"]["train_accuracy_mean"] > 0.90
    assert 0.70 <= m["sgd"]["train_accuracy_mean"] <= 0.90
    assert len(m["sgd"]["train_accuracy"]) == 3
    assert r["claims"]["fashion_adam_beats_gd_same_lr"]


def test_lr_decay(out):
    r = run_quick(lr_decay, out)
    c = r["claims"]
    assert c["every_epoch_lr_at_1000_is_1e-4"]  # α₀ / (1 + 1000)
    assert c["every_epoch_cost_stalls"]
    assert c["fixed_interval_beats_every_epoch_by_10_points"]
    assert set(r["fashion"]) - {"data"} == {"constant", "staircase (×0.5 every 1)"}


def test_minibatch(out):
    r = run_quick(minibatch, out)
    c = r["claims"]
    assert c["steps_per_epoch_is_ceil_n_over_b"]
    assert c["smaller_batches_lower_loss_after_one_epoch"]
    assert [row["steps_per_epoch"] for row in r["rows"]] == [2000, 125, 8, 1]


def test_saddle_points(out):
    r = run_quick(saddle_points, out)
    c = r["claims"]
    for k in (
        "goe_p1_is_half",
        "goe_p2_is_2_minus_sqrt2_over_4",
        "goe_normalisation_is_mehta",
        "goe_monte_carlo_agrees",
        "goe_theta_within_25pct",
        "goe_p_decreasing",
    ):
        assert c[k], k
    assert abs(r["goe"]["fit"]["theta_with_linear_term"] - math.log(3) / 4) < 0.25 * math.log(3) / 4
    assert c["adam_escapes_faster_than_gd"] and c["rmsprop_escapes_faster_than_gd"]
    assert c["gd_plateau_on_monkey_saddle"]
    # GD's escape from 5x² − y²: y grows by (1 + 2·lr) per step, so ≈ ln(1/y₀)/ln(1.02) steps
    gd = r["escape"]["5x² − y²"]["sgd"]["steps_to_escape"]
    assert abs(gd - math.log(1 / 1e-5) / math.log(1.02)) < 30
    # Newton on ∇L = 0 found real critical points; the lowest is a minimum, others are saddles
    assert all(p["grad_norm"] < 1e-8 for p in r["critical_points"]["points"])
    assert c["network_lowest_point_is_minimum"] and c["network_saddles_found"]
    assert c["network_index_rank_correlation_positive"]


# ------------------------------------------------------------------- the shared helpers
def test_fit_seeds_is_jbp_fit_per_seed():
    ds = jbp.data.load("moons")
    net = jbp.MLP(
        (2, 5, 2, 1), ("relu", "relu"), "sigmoid", "binary_cross_entropy", initializer="he"
    )
    opt = jbp.optim.adam(0.01)
    state, hist = jbp.fit(net, opt, ds, batch_size=64, epochs=4, key=jax.random.key(7))
    states, h = common.fit_seeds(net, opt, ds, batch_size=64, epochs=4, seeds=[5, 7])
    np.testing.assert_allclose(h["train_loss"][:, 1], [r["train_loss"] for r in hist], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(states.params), strict=True):
        np.testing.assert_allclose(np.asarray(b[1]), np.asarray(a), rtol=1e-5, atol=1e-6)
