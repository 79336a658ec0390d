"""Normalisation layers with hand-written backward passes: ``LayerNorm`` and ``BatchNorm``.

Both normalise, then scale and shift per feature (the last axis)::

    x̂ = (x − μ)/σ̂,   σ̂ = √(σ² + ε),   y = γ ⊙ x̂ + β

and differ in what μ and σ² are averaged over: LayerNorm over the features of one example
(so examples stay independent), BatchNorm over the batch — every axis but the last, so the
batch and, for NHWC images, the spatial positions (so examples are coupled:
``batch_coupled = True``). With dx̂ = dy ⊙ γ, the backward of the normalisation is, for the
n values a statistic is taken over (the CS231n / makemore derivation)::

    dγ = Σ dy ⊙ x̂,   dβ = Σ dy            (summed over every axis but the features)
    dx = (1/σ̂) ⊙ (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂))

The two mean terms are the paths through μ and σ²: moving one input moves the statistics
of all the others. In evaluation mode BatchNorm uses fixed running statistics, so those
terms vanish and dx = dy ⊙ γ/σ̂.

References: Ba, Kiros & Hinton, "Layer Normalization", 2016; Ioffe & Szegedy, "Batch
Normalization", ICML 2015.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from jbp.axes import current_batch_axis
from jbp.layers import Layer, shape_tuple
from jbp.util import real


def _check_eps(name, eps):
    real("eps", eps, low=0, low_open=True, owner=name)


def _features(name, in_shape):
    in_shape = shape_tuple(in_shape)
    if not in_shape or isinstance(in_shape[0], tuple):
        raise ValueError(
            f"{name} takes one input of shape (batch, …, features), got in_shape={in_shape}"
        )
    return in_shape, in_shape[-1]


def _scale_shift(features, dtype):
    return {"gamma": jnp.ones((features,), dtype), "beta": jnp.zeros((features,), dtype)}


# ---------------------------------------------------------------------- LayerNorm
@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Layer normalisation over the last axis (the features), one example at a time.

    ``y = γ ⊙ (x − μ)/√(σ² + ε) + β`` with μ, σ² (biased) the mean and variance of each
    example's last axis; params ``{"gamma": (features,), "beta": (features,)}`` start at 1
    and 0. Any input (batch, …, features): every leading position is normalised on its own.

    Backward, with dx̂ = dy ⊙ γ and means over the last axis::

        dx = (1/σ̂) ⊙ (dx̂ − mean(dx̂) − x̂ ⊙ mean(dx̂ ⊙ x̂)),  dγ = Σ dy ⊙ x̂,  dβ = Σ dy

    Reference: Ba, Kiros & Hinton, "Layer Normalization", arXiv:1607.06450 (2016).
    """

    eps: float = 1e-5

    def __post_init__(self):
        _check_eps("LayerNorm", self.eps)

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape, features = _features("LayerNorm", in_shape)
        return _scale_shift(features, dtype), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        var = jnp.mean(xc * xc, axis=-1, keepdims=True)
        inv = jax.lax.rsqrt(var + self.eps)  # 1/σ̂, one per example (and position)
        xhat = xc * inv
        return params["gamma"] * xhat + params["beta"], (xhat, inv), state

    def backward(self, params, cache, dy):
        xhat, inv = cache
        axes = tuple(range(dy.ndim - 1))
        grads = {"gamma": jnp.sum(dy * xhat, axis=axes), "beta": jnp.sum(dy, axis=axes)}
        dxhat = dy * params["gamma"]
        dx = inv * (
            dxhat
            - jnp.mean(dxhat, axis=-1, keepdims=True)
            - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True)
        )
        return grads, dx


# ---------------------------------------------------------------------- BatchNorm
@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalisation over every axis but the last: the batch (and H, W for NHWC).

    **Training** (``train=True``) normalises with the statistics of the batch's *real* rows:
    with w the mask (1 for a real example, 0 for a padded row of a ragged last batch; all
    ones when ``mask`` is None) and n = Σ w · (positions per example)::

        μ = Σ w·x / n,   σ² = Σ w·(x − μ)² / n   (biased),   y = w ⊙ (γ ⊙ (x − μ)/σ̂ + β)

    Padded rows neither enter μ, σ² nor the gradients: their output is 0, their dx is 0 and
    they add nothing to dγ, dβ. The backward is the exact VJP of this forward::

        g = w ⊙ dy,   dβ = Σ g,   dγ = Σ g ⊙ x̂
        dx = (γ/σ̂) ⊙ w ⊙ (dy − Σ g / n − x̂ ⊙ Σ(g ⊙ x̂) / n)

    **Running statistics** (the state ``{"mean": (features,), "var": (features,)}``, starting
    at 0 and 1 as in ``flax.nnx.BatchNorm``) follow an exponential moving average of the batch
    statistics in each training step::

        running = momentum · running + (1 − momentum) · batch

    (flax's convention; PyTorch's ``momentum`` is the other weight, 1 − this one). As in flax,
    the running variance averages the **biased** batch variance σ² above (PyTorch averages the
    unbiased n/(n − 1)·σ²). A batch without any real row leaves the state unchanged.

    **Evaluation** (``train=False``) normalises each example with the running statistics and
    returns the state unchanged; the mask is not needed (examples are independent) and the
    backward is dx = dy ⊙ γ/σ̂, dγ = Σ dy ⊙ x̂, dβ = Σ dy.

    **Several devices**: when the batch is split over a mapped axis (``jbp.parallel``, or
    your own ``shard_map`` traced inside ``jbp.layers.batch_axis(name)``), the forward
    ``lax.psum``\\ s Σ w, Σ w·x and Σ w·(x − μ)², and the backward Σ g and Σ g ⊙ x̂, over that
    axis, so every device normalises with the statistics of the whole batch and its dx is the
    one-device dx of its rows. dγ and dβ stay *per-device* sums (the engine sums parameter
    gradients over devices, as for any layer). The backward reads
    :func:`jbp.layers.current_batch_axis` when it is traced, so trace it in the same context
    as the forward.

    Args:
      momentum: weight of the old running statistics, in [0, 1].
      eps: ε added to the variance.

    Params ``{"gamma": (features,), "beta": (features,)}`` (1 and 0 at init).

    Reference: Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015; the backward as derived in Stanford's
    CS231n assignment 2 and Karpathy's makemore part 4.
    """

    momentum: float = 0.9
    eps: float = 1e-5
    batch_coupled = True

    def __post_init__(self):
        real("momentum", self.momentum, low=0, high=1, owner="BatchNorm")
        _check_eps("BatchNorm", self.eps)

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape, features = _features("BatchNorm", in_shape)
        state = {"mean": jnp.zeros((features,), dtype), "var": jnp.ones((features,), dtype)}
        return _scale_shift(features, dtype), state, in_shape

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        gamma, beta = params["gamma"], params["beta"]
        if not train:
            inv = jax.lax.rsqrt(state["var"] + self.eps)
            xhat = (x - state["mean"]) * inv
            return gamma * xhat + beta, {"xhat": xhat, "inv": inv}, state
        axis = current_batch_axis()
        total = (lambda v: v) if axis is None else (lambda v: jax.lax.psum(v, axis))  # noqa: E731
        axes = tuple(range(x.ndim - 1))
        if mask is None:
            w = jnp.ones((x.shape[0],), x.dtype)
        else:
            w = jnp.asarray(mask, x.dtype)
        wb = w.reshape((-1,) + (1,) * (x.ndim - 1))
        positions = math.prod(x.shape[1:-1])  # per example and feature (H·W for NHWC)
        n, s1 = total((jnp.sum(w) * positions, jnp.sum(wb * x, axis=axes)))
        safe_n = jnp.maximum(n, 1)
        mean = s1 / safe_n
        xc = x - mean
        var = total(jnp.sum(wb * xc * xc, axis=axes)) / safe_n  # two passes: no cancellation
        inv = jax.lax.rsqrt(var + self.eps)
        xhat = xc * inv
        y = wb * (gamma * xhat + beta)
        m = jnp.asarray(self.momentum, x.dtype)
        seen = n > 0
        new_state = {
            "mean": jnp.where(seen, m * state["mean"] + (1 - m) * mean, state["mean"]),
            "var": jnp.where(seen, m * state["var"] + (1 - m) * var, state["var"]),
        }
        return y, {"xhat": xhat, "inv": inv, "w": w, "n": safe_n}, new_state

    def backward(self, params, cache, dy):
        gamma, xhat, inv = params["gamma"], cache["xhat"], cache["inv"]
        axes = tuple(range(dy.ndim - 1))
        if "w" not in cache:  # evaluation: fixed statistics, examples independent
            grads = {"gamma": jnp.sum(dy * xhat, axis=axes), "beta": jnp.sum(dy, axis=axes)}
            return grads, dy * (gamma * inv)
        wb = cache["w"].reshape((-1,) + (1,) * (dy.ndim - 1))
        g = wb * dy
        dbeta, dgamma = jnp.sum(g, axis=axes), jnp.sum(g * xhat, axis=axes)
        axis = current_batch_axis()
        sum_g, sum_gx = (dbeta, dgamma) if axis is None else jax.lax.psum((dbeta, dgamma), axis)
        n = cache["n"]
        dx = (gamma * inv) * wb * (dy - sum_g / n - xhat * (sum_gx / n))
        return {"gamma": dgamma, "beta": dbeta}, dx
