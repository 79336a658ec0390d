"""The seed chapter's first derivation, executable: one case at a time, index by index.

The network has three layers of units, M → I → J: inputs xₘ, a sigmoid hidden layer and a
linear output, trained on the squared error e = ½ Σⱼ (tⱼ − vⱼ)². For one case (example)::

    uᵢ = Σₘ wₘᵢ xₘ + bᵢ      yᵢ = σ(uᵢ)          (hidden layer I)
    uⱼ = Σᵢ wᵢⱼ yᵢ + bⱼ      vⱼ = uⱼ             (linear output layer J)

The deltas δ = ∂e/∂u, case by case::

    δⱼᴶ = (tⱼ − vⱼ)·(−1)·σ'(uⱼ)        with σ' ≡ 1 for the linear output
    δᵢᴵ = Σⱼ δⱼᴶ wᵢⱼ σ'(uᵢ)             with σ'(uᵢ) = yᵢ(1 − yᵢ)

and the weight derivatives ∂e/∂wᵢⱼ = δⱼᴶ yᵢ, ∂e/∂wₘᵢ = δᵢᴵ xₘ, ∂e/∂b = δ. Averaged over the
cases of a batch they must equal the vectorised backward of ``jbp.MLP((M, I, J), "sigmoid",
"identity", "squared_error")`` — ``tests/test_derivation.py`` checks exactly that.

Plain Python loops over NumPy float64 scalars: slow on purpose, so each line is one symbol of
the derivation.
"""

import math

import numpy as np


def _sigmoid(u):
    return 1.0 / (1.0 + math.exp(-u))


def case_deltas(params, x, t):
    """Forward and backward for ONE case. Returns ``(e, δᴵ, δᴶ, grads)``.

    ``params`` is the jbp layout ``[{"W": (M, I), "b": (I,)}, {"W": (I, J), "b": (J,)}]``.
    """
    w_mi, b_i = np.asarray(params[0]["W"], float), np.asarray(params[0]["b"], float)
    w_ij, b_j = np.asarray(params[1]["W"], float), np.asarray(params[1]["b"], float)
    M, I = w_mi.shape
    J = w_ij.shape[1]
    # forward, unit by unit
    u_i = [sum(w_mi[m, i] * x[m] for m in range(M)) + b_i[i] for i in range(I)]
    y_i = [_sigmoid(u) for u in u_i]
    u_j = [sum(w_ij[i, j] * y_i[i] for i in range(I)) + b_j[j] for j in range(J)]
    v_j = list(u_j)  # linear output: vⱼ = uⱼ
    e = 0.5 * sum((t[j] - v_j[j]) ** 2 for j in range(J))
    # output deltas: δⱼ = (tⱼ − vⱼ)·(−1)·σ'(uⱼ), σ' = 1 for a linear unit
    delta_j = [(t[j] - v_j[j]) * (-1.0) * 1.0 for j in range(J)]
    # hidden deltas: δᵢ = Σⱼ δⱼ wᵢⱼ σ'(uᵢ), σ'(uᵢ) = yᵢ(1 − yᵢ)
    delta_i = [
        sum(delta_j[j] * w_ij[i, j] for j in range(J)) * y_i[i] * (1 - y_i[i]) for i in range(I)
    ]
    # weight derivatives: ∂e/∂w = δ_out · (input to that weight)
    g_ij = np.array([[delta_j[j] * y_i[i] for j in range(J)] for i in range(I)])
    g_mi = np.array([[delta_i[i] * x[m] for i in range(I)] for m in range(M)])
    grads = [{"W": g_mi, "b": np.array(delta_i)}, {"W": g_ij, "b": np.array(delta_j)}]
    return e, np.array(delta_i), np.array(delta_j), grads


def batch_grads(params, x, t):
    """The mean over cases of :func:`case_deltas`: ``(mean e, grads)``."""
    x, t = np.asarray(x, float), np.asarray(t, float)
    results = [case_deltas(params, x[k], t[k]) for k in range(x.shape[0])]
    n = len(results)
    loss = sum(r[0] for r in results) / n
    grads = [
        {name: sum(r[3][l][name] for r in results) / n for name in ("W", "b")} for l in range(2)
    ]
    return loss, grads
