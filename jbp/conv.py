"""Convolution and pooling layers (NHWC) with hand-written backward passes, side by side.

Shapes: x is (n, h, w, c) ("NHWC"), a kernel is (kh, kw, c_in, c_out) ("HWIO"), as in
``jax.lax.conv_general_dilated(x, W, strides, padding, dimension_numbers=("NHWC", "HWIO",
"NHWC"))``. Padding is ``"SAME"``, ``"VALID"`` or explicit ``((top, bottom), (left, right))``
with the semantics of ``lax`` (``lax.padtype_to_pads``: SAME gives ⌈h/s⌉ outputs and puts the
odd padding row at the bottom). With padded height hₚ = top + h + bottom the output has
h_out = ⌊(hₚ − kh)/s⌋ + 1 rows (and likewise for the width).

Convolution (a cross-correlation, as in every deep-learning library), written with patches:
for each kernel offset (i, j) the strided slice Xᵢⱼ[n, p, q, :] = Xpad[n, i + s·p, j + s·q, :]
of the padded input is one block of the patches matrix P (im2col)::

    P  = [X₀₀ | X₀₁ | … | X_(kh−1)(kw−1)]      (n·h_out·w_out, kh·kw·c_in)
    Y  = P·Wₘ + b                              Wₘ = W reshaped to (kh·kw·c_in, c_out)
    dWₘ = Pᵀ·dY,  db = Σ_{n,p,q} dY            (the dense layer's BP3/BP4, one row per pixel)
    dP = dY·Wₘᵀ,  dX = Σᵢⱼ scatter_(i,j)(dPᵢⱼ)  (col2im: each block goes back to the strided
                                               positions it was read from, overlaps add up)

Pooling uses the same strided slices: max pooling keeps, per output, the index of the *first*
maximum in row-major window order (the tie rule of ``jax.vjp`` of ``lax.reduce_window`` with
``lax.max``, i.e. of XLA's select-and-scatter), and its backward sends dY there only; average
pooling sends dY/count to every position of the window.

References: CS231n, "Convolutional Neural Networks" notes and its im2col assignment;
Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016), for the
output sizes and the transposed convolution that the backward for dX is.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jbp.layers import INITIALIZERS, Layer, shape_tuple

# Formulation (measured). XLA's CPU convolution is many times slower inside a ``lax.scan``
# body than as a jitted call on its own (JAX issue 12868), and a training epoch is one scan
# (jbp.epoch); strided slices, pads and matmuls do not suffer from it. So Conv is
# patches·matrix both ways. Forward+backward, float32, batch 128, 3×3 SAME stride 1, on this
# project's CPU machine (2 cores shared with other jobs; medians of 35 jitted calls / of 7 scans
# over 10 batches, in ms per step; the minima were 10–50 % lower, the ranking the same):
#
#   formulation                                   28×28×1→32         14×14×32→64
#                                                 per call  in scan  per call  in scan
#   jax.vjp of lax.conv_general_dilated             11.5      72.7     24.0     684
#   patches·W; cache x, P rebuilt; dX by lax.pad     3.3       4.0     42.2      27.1  <- this
#   the same, P kept in the cache                    3.7       4.4     42.3      26.9
#   the same, dX by .at[strided slice].add           4.0       4.9     44.2      23.9
#   dX as patches(dilated, padded dY)·flipped W    101        36.3     91.0      38.3
#
# Inside the scan (what training runs) patches·matrix is 18× (first layer) and 25× (second)
# faster than lax's convolution; as a lone jitted call lax wins on the wide layer (its
# convolution beats three matmuls of 25088×288×64). Keeping P saves no measurable time and
# costs kh·kw times x's memory per layer, so the cache is x. The scatter-add is no faster and
# the flipped-kernel dX builds a kh·kw·c_out-wide patches matrix of the (dilated) dY: slower.
# MaxPool 2×2 of 28×28×32 likewise: 2.7 / 6.0 ms against 44.6 / 22.4 ms for jax.vjp of
# lax.reduce_window (XLA's select-and-scatter).


def _jit_method(fn):
    """``fn(self, *arrays)`` jitted with the (hashable) layer static.

    Inside a jitted training step this is inlined and changes nothing; called eagerly (as
    ``check_layer``, a notebook or a debugger do) it compiles one program per layer and
    shape instead of one per slice, pad and matmul.
    """
    jitted = jax.jit(fn, static_argnums=0)

    @functools.wraps(fn)
    def method(self, *args):
        return jitted(self, *args)

    return method


def _pair(v, what, owner):
    """An int or a pair of ints -> a pair of positive ints (ValueError naming ``what``)."""
    given = v
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    try:
        v = tuple(v)
    except TypeError:
        v = None
    if (
        v is None
        or len(v) != 2
        or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in v)
    ):
        raise ValueError(
            f"{owner} {what} must be a positive int or a pair of them, got {what}={given!r}"
        )
    return (int(v[0]), int(v[1]))


def _padding(p, owner):
    """``"SAME"``/``"VALID"`` (any case) or ((top, bottom), (left, right)) of ints ≥ 0."""
    if isinstance(p, str):
        if p.upper() not in ("SAME", "VALID"):
            raise ValueError(
                f"{owner} padding must be 'SAME', 'VALID' or ((t, b), (l, r)), got {p!r}"
            )
        return p.upper()
    try:
        pairs = tuple(tuple(q) for q in p)
    except TypeError:
        pairs = None
    if (
        pairs is None
        or len(pairs) != 2
        or any(len(q) != 2 for q in pairs)
        or any(
            isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0
            for q in pairs
            for d in q
        )
    ):
        raise ValueError(
            f"{owner} padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)) of "
            f"ints >= 0, got {p!r}"
        )
    return tuple((int(a), int(b)) for a, b in pairs)


def _pads(padding, hw, window, strides):
    """The explicit ((top, bottom), (left, right)) for an input of spatial size ``hw``."""
    if isinstance(padding, str):
        return tuple(tuple(q) for q in lax.padtype_to_pads(hw, window, strides, padding))
    return padding


def _out_hw(hw, window, strides, pads):
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(hw, window, strides, pads, strict=True)
    )


def _geometry(owner, in_shape, window, strides, padding):
    """(pads, out_hw) for an (h, w, c) input, or a ValueError saying what does not fit."""
    in_shape = shape_tuple(in_shape)
    if len(in_shape) != 3:
        raise ValueError(
            f"{owner} takes NHWC inputs: in_shape must be (h, w, c), got in_shape={in_shape}"
        )
    pads = _pads(padding, in_shape[:2], window, strides)
    out = _out_hw(in_shape[:2], window, strides, pads)
    if min(out) < 1:
        raise ValueError(
            f"{owner}: window {window} does not fit the input {in_shape[:2]} with padding "
            f"{pads} (output size {out})"
        )
    return pads, out


def _windows(xp, window, strides, out_hw):
    """The strided slices Xᵢⱼ[n, p, q] = xp[n, i + s·p, j + s·q], row-major over (i, j)."""
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    n, c = xp.shape[0], xp.shape[3]
    return [
        lax.slice(
            xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _place(parts, window, strides, pads, hw):
    """Σᵢⱼ of each part put back at the positions its slice was read from, padding cropped.

    The transpose of :func:`_windows` (after padding): one ``lax.pad`` per offset with
    interior padding s − 1 (the strided positions) and edges that may be negative (the
    crop), all summed; XLA fuses the pads and adds into one loop.
    """
    kw, (sh, sw), ((pt, pb), (pl, pr)) = window[1], strides, pads
    hp, wp = hw[0] + pt + pb, hw[1] + pl + pr
    ho, wo = parts[0].shape[1:3]
    zero = jnp.zeros((), parts[0].dtype)
    total = None
    for k, part in enumerate(parts):
        i, j = divmod(k, kw)
        cfg = (
            (0, 0, 0),
            (i - pt, hp - (i + sh * (ho - 1) + 1) - pb, sh - 1),
            (j - pl, wp - (j + sw * (wo - 1) + 1) - pr, sw - 1),
            (0, 0, 0),
        )
        placed = lax.pad(part, zero, cfg)
        total = placed if total is None else total + placed
    return total


def _pad_input(x, pads, value=0.0):
    (pt, pb), (pl, pr) = pads
    if not any((pt, pb, pl, pr)):
        return x
    return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


# --------------------------------------------------------------------------- Conv
@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """A 2-D convolution Y = X ⋆ W + b over NHWC inputs, as patches·matrix (module docstring).

    Args:
      features: output channels.
      kernel_size: (kh, kw) (an int k means (k, k)).
      strides: (sh, sw) (an int s means (s, s)).
      padding: ``"SAME"``, ``"VALID"`` or ((top, bottom), (left, right)), as in ``lax``.
      use_bias: add ``b``.
      initializer: ``"he"``, ``"lecun"`` or ``"glorot"`` with fan_in = kh·kw·c_in and
        fan_out = kh·kw·features; biases start at zero.

    Params ``{"W": (kh, kw, c_in, features), "b": (features,)}`` (HWIO); ``init`` returns the
    output shape (h_out, w_out, features). The forward equals ``lax.conv_general_dilated``
    with ``dimension_numbers=("NHWC", "HWIO", "NHWC")``.
    """

    features: int
    kernel_size: tuple = (3, 3)
    strides: tuple = (1, 1)
    padding: object = "SAME"
    use_bias: bool = True
    initializer: str = "he"

    def __post_init__(self):
        f = self.features
        if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 1:
            raise ValueError(f"Conv features must be a positive integer, got {f!r}")
        object.__setattr__(self, "features", int(f))
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size, "kernel_size", "Conv"))
        object.__setattr__(self, "strides", _pair(self.strides, "strides", "Conv"))
        object.__setattr__(self, "padding", _padding(self.padding, "Conv"))
        if not isinstance(self.use_bias, (bool, np.bool_)):
            raise ValueError(f"Conv use_bias must be True or False, got {self.use_bias!r}")
        if self.initializer not in ("he", "lecun", "glorot"):
            raise ValueError(
                f"Conv initializer must be 'he', 'lecun' or 'glorot', got {self.initializer!r}"
            )

    def init(self, key, in_shape, dtype=jnp.float32):
        _, (ho, wo) = _geometry("Conv", in_shape, self.kernel_size, self.strides, self.padding)
        c_in = shape_tuple(in_shape)[2]
        kh, kw = self.kernel_size
        var = INITIALIZERS[self.initializer](kh * kw * c_in, kh * kw * self.features)
        shape = (kh, kw, c_in, self.features)
        params = {"W": jax.random.normal(key, shape, dtype) * jnp.asarray(np.sqrt(var), dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, (), (ho, wo, self.features)

    def _patches(self, x):
        pads, out = _geometry("Conv", x.shape[1:], self.kernel_size, self.strides, self.padding)
        parts = _windows(_pad_input(x, pads), self.kernel_size, self.strides, out)
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)

    def forward(self, params, state, x, *, train=False, key=None):
        y, cache = self._forward(params, x)
        return y, cache, state

    @_jit_method
    def _forward(self, params, x):
        w = params["W"]
        p = self._patches(x)  # (n, h_out, w_out, kh·kw·c_in)
        y = jnp.dot(p, w.reshape(-1, w.shape[-1]))  # Y = P·Wₘ
        if self.use_bias:
            y = y + params["b"]
        # the cache is x: rebuilding P in the backward cost no measurable time (see the table
        # above; on a quiet machine too: 23.4 vs 23.8 ms for 14×14×32→64 at batch 128, XLA
        # shares the slices) and keeps the cache kh·kw times smaller
        return y, x

    @_jit_method
    def backward(self, params, cache, dy):
        x, w = cache, params["W"]
        kh, kw, c_in, f = w.shape
        pads, _ = _geometry("Conv", x.shape[1:], self.kernel_size, self.strides, self.padding)
        p = self._patches(x)
        dy2 = dy.reshape(-1, f)
        grads = {"W": jnp.dot(p.reshape(-1, p.shape[-1]).T, dy2).reshape(w.shape)}  # Pᵀ·dY
        if self.use_bias:
            grads["b"] = jnp.sum(dy2, axis=0)  # Σ dY
        dp = jnp.dot(dy, w.reshape(-1, f).T)  # dP = dY·Wₘᵀ, (n, h_out, w_out, kh·kw·c_in)
        parts = [dp[..., k * c_in : (k + 1) * c_in] for k in range(kh * kw)]
        dx = _place(parts, self.kernel_size, self.strides, pads, x.shape[1:3])
        return grads, dx


# ------------------------------------------------------------------------ pooling
def _pool_fields(self, owner):
    window = _pair(self.window, "window", owner)
    strides = window if self.strides is None else _pair(self.strides, "strides", owner)
    padding = _padding(self.padding, owner)
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
        _, out = _geometry("MaxPool", in_shape, self.window, self.strides, self.padding)
        return (), (), (*out, shape_tuple(in_shape)[2])

    def forward(self, params, state, x, *, train=False, key=None):
        y, cache = self._forward(x)
        return y, cache, state

    @_jit_method
    def _forward(self, x):
        pads, out = _geometry("MaxPool", x.shape[1:], self.window, self.strides, self.padding)
        parts = _windows(_pad_input(x, pads, -jnp.inf), self.window, self.strides, out)
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

    @_jit_method
    def _backward(self, cache, dy):
        idx, shape = cache
        hw = shape.shape[1:3]
        pads = _pads(self.padding, hw, self.window, self.strides)
        zero = jnp.zeros((), dy.dtype)
        (kh, kw), (n, ho, wo, c) = self.window, dy.shape
        parts = [jnp.where(idx == k, dy, zero) for k in range(kh * kw)]
        if self.strides == self.window and (ho * kh, wo * kw) == hw and not any(sum(pads, ())):
            # windows that tile the input: interleave the parts with one transpose instead of
            # kh·kw padded copies of the input's size (the general path below) — 28×28×32 at
            # batch 128 inside lax.scan: ≈ 1.3 ms instead of ≈ 7.6 ms
            tiles = jnp.stack(parts, axis=3).reshape(n, ho, wo, kh, kw, c)
            return tiles.transpose(0, 1, 3, 2, 4, 5).reshape(n, *hw, c)
        return _place(parts, self.window, self.strides, pads, hw)


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
        if not isinstance(self.count_include_pad, (bool, np.bool_)):
            raise ValueError(
                f"AvgPool count_include_pad must be True or False, got {self.count_include_pad!r}"
            )

    def init(self, key, in_shape, dtype=jnp.float32):
        _, out = _geometry("AvgPool", in_shape, self.window, self.strides, self.padding)
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

    @_jit_method
    def _forward(self, x):
        pads, out = _geometry("AvgPool", x.shape[1:], self.window, self.strides, self.padding)
        parts = _windows(_pad_input(x, pads), self.window, self.strides, out)
        y = sum(parts[1:], parts[0]) / self._count(x.shape[1:3], pads, out, x.dtype)
        return y, jnp.zeros((0, *x.shape[1:3]), x.dtype)

    def backward(self, params, cache, dy):
        return (), self._backward(cache, dy)

    @_jit_method
    def _backward(self, cache, dy):
        hw = cache.shape[1:3]
        pads = _pads(self.padding, hw, self.window, self.strides)
        g = dy / self._count(hw, pads, dy.shape[1:3], dy.dtype)
        k_all = self.window[0] * self.window[1]
        return _place([g] * k_all, self.window, self.strides, pads, hw)


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


# ------------------------------------------------------------------------ reshape
@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """(n, *in_shape) -> (n, *shape), ``shape`` per example (one entry may be −1).

    The backward reshapes dY back to the input's shape (carried by an empty cache array).
    """

    shape: tuple

    def __post_init__(self):
        s = (self.shape,) if isinstance(self.shape, (int, np.integer)) else self.shape
        try:
            s = tuple(s)
        except TypeError:
            s = None
        if (
            not s
            or any(
                isinstance(d, bool) or not isinstance(d, (int, np.integer)) or (d < 1 and d != -1)
                for d in s
            )
            or sum(d == -1 for d in s) > 1
        ):
            raise ValueError(
                f"Reshape shape must be positive ints with at most one -1, got {self.shape!r}"
            )
        object.__setattr__(self, "shape", tuple(int(d) for d in s))

    def _target(self, in_shape):
        size, known = math.prod(in_shape), math.prod(d for d in self.shape if d != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(
                f"Reshape cannot turn in_shape={tuple(in_shape)} ({size} values) into {self.shape}"
            )
        return tuple(size // known if d == -1 else d for d in self.shape)

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), self._target(shape_tuple(in_shape))

    def forward(self, params, state, x, *, train=False, key=None):
        y = x.reshape((x.shape[0], *self._target(x.shape[1:])))
        return y, jnp.zeros((0, *x.shape[1:]), x.dtype), state

    def backward(self, params, cache, dy):
        return (), dy.reshape((dy.shape[0], *cache.shape[1:]))
