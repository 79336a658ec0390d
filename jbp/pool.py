"""Pooling layers (NHWC) with hand-written backward passes: MaxPool, AvgPool, GlobalAvgPool.

x is (n, h, w, c); a window of (kh, kw) positions moves with strides (sh, sw) over the
(padded) input, as described in :mod:`jbp.windows`, and each channel is pooled on its own.
With Xᵢⱼ the strided slice of the padded input at window offset (i, j) (row-major over the
kh·kw offsets) and scatter_(i,j) its transpose, forward and backward are::

    MaxPool        Y = maxᵢⱼ Xᵢⱼ   (−∞ padding)       dX = Σᵢⱼ scatter_(i,j)([k* = (i, j)] ⊙ dY)
    AvgPool        Y = Σᵢⱼ Xᵢⱼ / count (0 padding)    dX = Σᵢⱼ scatter_(i,j)(dY / count)
    GlobalAvgPool  Y = mean over h, w   (n, c)      dX = dY / (h·w) at every position

k* is the index of the *first* maximum of each window in row-major window order: the tie rule
of ``jax.vjp`` of ``lax.reduce_window`` with ``lax.max`` (XLA's select-and-scatter), which
matters after a relu, where many windows are all zeros. ``count`` is kh·kw, or, with
``count_include_pad=False``, the number of input positions the window covers. Where windows
overlap (strides < window) the scattered gradients add up. No parameters.

Reference: CS231n, "Convolutional Neural Networks" notes (pooling layer and its backward).

Speed: the max pooling written as a running maximum over the strided slices (with the
index of the maximum kept in the cache) runs a 2×2 MaxPool of 28×28×32 in 2.7 / 6.0 ms (per
jitted call / inside ``lax.scan``) against 44.6 / 22.4 ms for ``jax.vjp`` of
``lax.reduce_window`` (see the table in :mod:`jbp.conv` for the setting).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np

from jbp.layers import Layer, shape_tuple
from jbp.util import flag
from jbp.windows import (
    explicit_pads,
    geometry,
    jit_method,
    pad_input,
    padding_arg,
    pair,
    place,
    windows,
)


def _pool_fields(self, owner):
    """Check and normalise ``window``, ``strides`` (None: the window) and ``padding``."""
    window = pair(self.window, "window", owner)
    strides = window if self.strides is None else pair(self.strides, "strides", owner)
    padding = padding_arg(self.padding, owner)
    if not isinstance(padding, str) and any(
        d >= k for (lo, hi), k in zip(padding, window, strict=True) for d in (lo, hi)
    ):
        raise ValueError(
            f"{owner} explicit padding must be smaller than the window {window} on every side "
            f"(a window of padding only has no input), got padding={padding}"
        )
    object.__setattr__(self, "window", window)
    object.__setattr__(self, "strides", strides)
    object.__setattr__(self, "padding", padding)


@dataclasses.dataclass(frozen=True)
class MaxPool(Layer):
    """Y[n, p, q, c] = max over the window at (s·p, s·q) of the (−∞-padded) input.

    Args:
      window: (kh, kw) (an int k means (k, k)).
      strides: (sh, sw); ``None`` means the window (non-overlapping windows).
      padding: ``"VALID"``, ``"SAME"`` or ((top, bottom), (left, right)) (each < the window).

    Backward: dY goes to the *first* maximum of each window in row-major window order (the
    tie rule of ``jax.vjp`` of ``lax.reduce_window(x, -inf, lax.max, …)``; after a relu many
    windows are all zeros), and overlapping windows (strides < window) add up. The forward
    keeps the index of that maximum (int8) in the cache; no parameters.
    """

    window: tuple = (2, 2)
    strides: tuple = None
    padding: object = "VALID"

    def __post_init__(self):
        _pool_fields(self, "MaxPool")

    def init(self, key, in_shape, dtype=jnp.float32):
        _, out = geometry("MaxPool", in_shape, self.window, self.strides, self.padding)
        return (), (), (*out, shape_tuple(in_shape)[2])

    def forward(self, params, state, x, *, train=False, key=None):
        y, cache = self._forward(x)
        return y, cache, state

    @jit_method
    def _forward(self, x):
        pads, out = geometry("MaxPool", x.shape[1:], self.window, self.strides, self.padding)
        parts = windows(pad_input(x, pads, -jnp.inf), self.window, self.strides, out)
        # a running maximum with a strict >: the first maximum wins ties (and jax.vjp of this
        # forward agrees with the backward there too)
        y, idx = parts[0], jnp.zeros(parts[0].shape, jnp.int8 if len(parts) < 128 else jnp.int32)
        for k, part in enumerate(parts[1:], start=1):
            better = part > y
            y = jnp.where(better, part, y)
            idx = jnp.where(better, jnp.asarray(k, idx.dtype), idx)
        # idx is (n, h_out, w_out, c); the empty array carries the input's shape
        return y, (idx, jnp.zeros((0, *x.shape[1:3]), x.dtype))

    def backward(self, params, cache, dy):
        return (), self._backward(cache, dy)

    @jit_method
    def _backward(self, cache, dy):
        idx, shape = cache
        hw = shape.shape[1:3]
        pads = explicit_pads(self.padding, hw, self.window, self.strides)
        zero = jnp.zeros((), dy.dtype)
        (kh, kw), (n, ho, wo, c) = self.window, dy.shape
        parts = [jnp.where(idx == k, dy, zero) for k in range(kh * kw)]
        if self.strides == self.window and (ho * kh, wo * kw) == hw and not any(sum(pads, ())):
            # windows that tile the input: interleave the parts with one transpose instead of
            # kh·kw padded copies of the input's size (the general path below) — 28×28×32 at
            # batch 128 inside lax.scan: ≈ 1.3 ms instead of ≈ 7.6 ms
            tiles = jnp.stack(parts, axis=3).reshape(n, ho, wo, kh, kw, c)
            return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, *hw, c)
        return place(parts, self.window, self.strides, pads, hw)


@dataclasses.dataclass(frozen=True)
class AvgPool(Layer):
    """Y[n, p, q, c] = the window's sum / count (zero-padded input).

    Args:
      window, strides, padding: as for :class:`MaxPool`.
      count_include_pad: divide by the window size kh·kw (padding counts as zeros, as
        ``lax.reduce_window(x, 0, lax.add, …) / (kh·kw)``, Flax's and PyTorch's default), or,
        when False, by the number of input positions in the window (Keras's "same").

    Backward: every position of a window receives dY/count; overlapping windows add up.
    """

    window: tuple = (2, 2)
    strides: tuple = None
    padding: object = "VALID"
    count_include_pad: bool = True

    def __post_init__(self):
        _pool_fields(self, "AvgPool")
        cip = flag("count_include_pad", self.count_include_pad, owner="AvgPool")
        object.__setattr__(self, "count_include_pad", cip)

    def init(self, key, in_shape, dtype=jnp.float32):
        _, out = geometry("AvgPool", in_shape, self.window, self.strides, self.padding)
        return (), (), (*out, shape_tuple(in_shape)[2])

    def _count(self, hw, pads, out, dtype):
        """kh·kw, or the (h_out, w_out, 1) number of input positions in each window."""
        if self.count_include_pad:
            return jnp.asarray(self.window[0] * self.window[1], dtype)
        per_axis = [
            np.array([min(s * o - lo + k, n) - max(s * o - lo, 0) for o in range(m)])
            for n, k, s, (lo, _), m in zip(hw, self.window, self.strides, pads, out, strict=True)
        ]
        return jnp.asarray(np.multiply.outer(*per_axis)[:, :, None], dtype)

    def forward(self, params, state, x, *, train=False, key=None):
        y, cache = self._forward(x)
        return y, cache, state

    @jit_method
    def _forward(self, x):
        pads, out = geometry("AvgPool", x.shape[1:], self.window, self.strides, self.padding)
        parts = windows(pad_input(x, pads), self.window, self.strides, out)
        y = sum(parts[1:], parts[0]) / self._count(x.shape[1:3], pads, out, x.dtype)
        return y, jnp.zeros((0, *x.shape[1:3]), x.dtype)

    def backward(self, params, cache, dy):
        return (), self._backward(cache, dy)

    @jit_method
    def _backward(self, cache, dy):
        hw = cache.shape[1:3]
        pads = explicit_pads(self.padding, hw, self.window, self.strides)
        g = dy / self._count(hw, pads, dy.shape[1:3], dy.dtype)
        k_all = self.window[0] * self.window[1]
        return place([g] * k_all, self.window, self.strides, pads, hw)


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """(n, h, w, c) -> (n, c): Y = the mean over h and w; dX = dY / (h·w) at every position."""

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape = shape_tuple(in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"GlobalAvgPool takes (h, w, c) inputs, got in_shape={in_shape}")
        return (), (), (in_shape[2],)

    def forward(self, params, state, x, *, train=False, key=None):
        return jnp.mean(x, axis=(1, 2)), jnp.zeros((0, *x.shape[1:3]), x.dtype), state

    def backward(self, params, cache, dy):
        h, w = cache.shape[1:3]
        dx = jnp.broadcast_to((dy / (h * w))[:, None, None, :], (dy.shape[0], h, w, dy.shape[1]))
        return (), dx
