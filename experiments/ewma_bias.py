"""Exponentially weighted averages: the 1/(1 − β) window and bias correction.

Claim (seed chapter; Ng, *Improving Deep Neural Networks*, week 2, "Exponentially weighted
averages", "Understanding exponentially weighted averages", "Bias correction"):
  * vₜ = β·vₜ₋₁ + (1 − β)·θₜ averages roughly the last 1/(1 − β) values — β = 0.9 about 10
    days, β = 0.98 about 50 days — because a value's weight has fallen by 1/e after that many
    steps (β^(1/(1−β)) ≈ 1/e). A larger β gives a smoother but later curve.
  * Starting from v₀ = 0 makes the early averages far too small: v₁ = (1 − β)·θ₁ (0.02·θ₁ for
    β = 0.98). Dividing by 1 − βᵗ removes the bias (the corrected v₁ is θ₁ exactly); once t
    is well past 1/(1 − β) the correction no longer matters.

The series is a year of synthetic daily temperatures (a seasonal cosine plus Gaussian noise),
like the course's London temperatures. ``jbp.ewma`` computes every average; a plain Python
loop checks it. The window is measured as the step response: the number of steps the
average needs to cover 1 − 1/e of a unit step.

Run: ``python -m experiments.ewma_bias [--quick] [--out DIR]``.
"""

import dataclasses
import sys

import numpy as np

import jbp
from experiments import common

NAME = "ewma_bias"


@dataclasses.dataclass(frozen=True)
class Config:
    days: int = 365  # length of the series
    mean: float = 12.0  # yearly mean temperature (°C)
    amplitude: float = 8.0  # seasonal swing: θ = mean − amplitude·cos(2πt/365) + noise
    noise: float = 3.0  # std of the daily noise (°C)
    betas: tuple = (0.9, 0.98)  # the course's two examples: ~10-day and ~50-day windows
    seed: int = 0  # NumPy seed of the noise


QUICK = Config()  # the whole experiment takes well under a second


def series(cfg):
    t = np.arange(1, cfg.days + 1)
    rng = np.random.default_rng(cfg.seed)
    clean = cfg.mean - cfg.amplitude * np.cos(2 * np.pi * t / 365.0)
    return t, clean, clean + cfg.noise * rng.standard_normal(cfg.days)


def loop_ewma(theta, beta, bias_correction):
    """The recurrence, one value at a time (the check on ``jbp.ewma``)."""
    v, out = 0.0, []
    for t, x in enumerate(theta, start=1):
        v = beta * v + (1 - beta) * x
        out.append(v / (1 - beta**t) if bias_correction else v)
    return np.array(out)


def step_window(beta, length=1000):
    """Steps until the average of a unit step reaches 1 − 1/e (the 'window')."""
    v = np.asarray(jbp.ewma(np.ones(length), beta, bias_correction=False))
    return int(np.argmax(v >= 1 - np.exp(-1.0))) + 1


def analyse(cfg):
    t, clean, theta = series(cfg)
    out = {"theta_1": float(theta[0])}
    avgs = {}
    for beta in cfg.betas:
        w = 1.0 / (1.0 - beta)
        for corr in (False, True):
            v = np.asarray(jbp.ewma(theta, beta, bias_correction=corr), np.float64)
            avgs[(beta, corr)] = v
            key = f"beta={beta}" + (",corrected" if corr else "")
            early = slice(0, int(round(w)))  # the first window: where the bias lives
            late = slice(int(5 * w), None)  # β^(5w) < 1%: bias correction is negligible
            out[key] = {
                "max_abs_diff_vs_loop": float(np.max(np.abs(v - loop_ewma(theta, beta, corr)))),
                "v_1": float(v[0]),
                "v_1_over_theta_1": float(v[0] / theta[0]),
                # error against the noise-free seasonal curve
                "mean_abs_error_first_window": float(np.mean(np.abs(v[early] - clean[early]))),
                "mean_abs_error_after_5_windows": float(np.mean(np.abs(v[late] - clean[late]))),
                # smoothness: day-to-day change of the average (raw series for comparison)
                "std_daily_change": float(np.std(np.diff(v))),
            }
        out[f"beta={beta}"]["window_expected"] = w
        out[f"beta={beta}"]["window_measured"] = step_window(beta)
    out["raw_std_daily_change"] = float(np.std(np.diff(theta)))
    return t, clean, theta, avgs, out


def plot(cfg, t, clean, theta, avgs):
    fig, axes = common.figure(1, 3, size=(5.0, 4.0))
    colors = {0.9: "tab:red", 0.98: "tab:green"}
    ax = axes[0, 0]
    ax.plot(t, theta, ".", color="tab:blue", ms=3, alpha=0.6, label="daily temperature θₜ")
    for beta in cfg.betas:
        ax.plot(
            t,
            avgs[(beta, True)],
            color=colors[beta],
            lw=2,
            label=f"β = {beta} (≈ {1 / (1 - beta):.0f} days), corrected",
        )
    ax.set_xlabel("day t")
    ax.set_ylabel("°C")
    ax.set_title("EWMA: larger β is smoother, and lags")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[0, 1]
    n = 80
    ax.plot(t[:n], theta[:n], ".", color="tab:blue", ms=4, alpha=0.6, label="θₜ")
    for beta in cfg.betas:
        ax.plot(
            t[:n],
            avgs[(beta, False)][:n],
            "--",
            color=colors[beta],
            lw=1.8,
            label=f"β = {beta}, no correction (v₀ = 0)",
        )
        ax.plot(
            t[:n],
            avgs[(beta, True)][:n],
            color=colors[beta],
            lw=1.8,
            label=f"β = {beta}, vₜ / (1 − βᵗ)",
        )
    ax.set_xlabel("day t")
    ax.set_ylabel("°C")
    ax.set_title(f"The first {n} days: bias towards v₀ = 0")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[0, 2]
    k = np.arange(1, 151)
    for beta in cfg.betas:
        v = np.asarray(jbp.ewma(np.ones(150), beta))
        w = 1 / (1 - beta)
        ax.plot(k, v, color=colors[beta], label=f"β = {beta}: 1/(1−β) = {w:.0f}")
        ax.axvline(w, color=colors[beta], ls=":", lw=1)
    ax.axhline(1 - np.exp(-1), color="k", ls=":", lw=1, label="1 − 1/e")
    ax.set_xlabel("steps after a unit step")
    ax.set_ylabel("uncorrected vₜ")
    ax.set_title("Window: the step response reaches 1 − 1/e\nafter ≈ 1/(1 − β) steps", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def main(argv=None):
    args = common.parse_args(argv, __doc__)
    cfg = QUICK if args.quick else Config()
    t, clean, theta, avgs, out = analyse(cfg)
    claims = {}
    for beta in cfg.betas:
        raw, cor = out[f"beta={beta}"], out[f"beta={beta},corrected"]
        claims[f"beta={beta}"] = {
            "matches_loop": max(raw["max_abs_diff_vs_loop"], cor["max_abs_diff_vs_loop"]) < 1e-3,
            # uncorrected v₁ = (1 − β)θ₁: starts near 0
            "uncorrected_starts_near_zero": abs(raw["v_1_over_theta_1"] - (1 - beta)) < 1e-4,
            "corrected_v1_is_theta1": abs(cor["v_1_over_theta_1"] - 1) < 1e-5,
            "correction_reduces_early_error": cor["mean_abs_error_first_window"]
            < 0.5 * raw["mean_abs_error_first_window"],
            "correction_negligible_late": abs(
                cor["mean_abs_error_after_5_windows"] - raw["mean_abs_error_after_5_windows"]
            )
            < 0.05,
            "window_is_1_over_1_minus_beta": abs(raw["window_measured"] - raw["window_expected"])
            <= 1,
        }
    b0, b1 = cfg.betas[0], cfg.betas[-1]
    claims["larger_beta_smoother"] = (
        out[f"beta={b1},corrected"]["std_daily_change"]
        < out[f"beta={b0},corrected"]["std_daily_change"]
        < out["raw_std_daily_change"]
    )
    for k, v in out.items():
        print(k, v, file=sys.stderr)
    fig = plot(cfg, t, clean, theta, avgs)
    return common.save(
        args.out, NAME, {"config": cfg, "quick": args.quick, "results": out, "claims": claims}, fig
    )


if __name__ == "__main__":
    main(sys.argv[1:])
