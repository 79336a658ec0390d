"""Convolution (NHWC) with a hand-written backward pass, and ``Reshape`` to make images.

Shapes: x is (n, h, w, c) ("NHWC"), a kernel is (kh, kw, c_in, c_out) ("HWIO"), as in
``jax.lax.conv_general_dilated(x, W, strides, padding, dimension_numbers=("NHWC", "HWIO",
"NHWC"))``. Padding is ``"SAME"``, ``"VALID"`` or explicit ((top, bottom), (left, right))
with the semantics of ``lax``; the output size is h_out = ⌊(hₚ − kh)/s⌋ + 1 for the padded
height hₚ (:mod:`jbp.windows` holds the geometry and the strided slices).

Convolution (a cross-correlation, as in every deep-learning library), written with patches:
for each kernel offset (i, j) the strided slice Xᵢⱼ[n, p, q, :] = Xpad[n, i + s·p, j + s·q, :]
of the padded input is one block of the patches matrix P (im2col)::

    P  = [X₀₀ | X₀₁ | … | X_(kh−1)(kw−1)]      (n·h_out·w_out, kh·kw·c_in)
    Y  = P·Wₘ + b                              Wₘ = W reshaped to (kh·kw·c_in, c_out)
    dWₘ = Pᵀ·dY,  db = Σ_{n,p,q} dY            (the dense layer's BP3/BP4, one row per pixel)
    dP = dY·Wₘᵀ,  dX = Σᵢⱼ scatter_(i,j)(dPᵢⱼ)  (col2im: each block goes back to the strided
                                               positions it was read from, overlaps add up)

For a 3×3 kernel at stride 1 the same convolution can run as Winograd's minimal filtering
F(2×2, 3×3), 16 matmuls over the channels with 2.25× fewer multiplications
(:mod:`jbp.winograd`, forward and backward written out there), and any convolution can run
as XLA's own convolution op with dX and dW written out as the transposed convolution and the
correlation of X with dY (:mod:`jbp.conv_xla`); ``algorithm`` chooses.

``Reshape`` turns each example into another shape of the same size, typically flat vectors
into the (h, w, c) images a convolution takes: Y = X reshaped, dX = dY reshaped back.

The pooling layers live in :mod:`jbp.pool`; ``MaxPool``, ``AvgPool`` and ``GlobalAvgPool``
are importable from here too.

References: CS231n, "Convolutional Neural Networks" notes and its im2col assignment;
Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016), for the
output sizes and the transposed convolution that the backward for dX is.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jbp import conv_xla, winograd
from jbp.layers import INITIALIZERS, Layer, shape_tuple
from jbp.pool import AvgPool, GlobalAvgPool, MaxPool
from jbp.util import choice, flag, integer, is_integer
from jbp.windows import geometry, jit_method, pad_input, padding_arg, pair, place, windows

__all__ = ["AvgPool", "Conv", "GlobalAvgPool", "MaxPool", "Reshape"]

#: the fewest input channels for which ``algorithm="auto"`` runs a 3×3 stride-1 Conv as
#: Winograd F(2×2, 3×3) on CPU (measured: see the tables below)
WINOGRAD_MIN_CHANNELS = 16
#: on GPU, ``algorithm="auto"`` runs a Conv as XLA's convolution (cuDNN) from this many input
#: channels and XLA_MIN_ROWS output pixels n·h_out·w_out on (measured: see below)
XLA_MIN_CHANNELS, XLA_MIN_ROWS = 16, 32768
#: backends on which a one-input-channel patches Conv runs its forward as kh·kw broadcast
#: multiply-adds and builds Pᵀ for dW as contiguous rows (measured: see Conv._forward)
ONE_CHANNEL_BACKENDS = ("cpu", "gpu")
#: the formulations a Conv can run as ("auto" picks one, see Conv.formulation)
ALGORITHMS = ("auto", "patches", "winograd", "xla")

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
# (MaxPool 2×2 of 28×28×32 likewise, measured the same way: see jbp.pool.)
#
# Winograd (jbp.winograd). A 3×3 kernel at stride 1 can instead run as F(2×2, 3×3): 16 matmuls
# over the channels with 1/2.25 of the patches' multiplications, plus memory-bound transforms
# (the transformed input and output are 4× the size of x and y). Forward+backward
# (dX included), float32, batch 128, inside a lax.scan of 20 steps, best of 5, ms per step:
#
#   layer              patches  winograd        layer              patches  winograd
#   28×28×1  → 32        7.1      10.4          14×14×8  → 64        6.8       8.5
#   28×28×4  → 32       12.5      19.3          14×14×16 → 64       13.6      10.9
#   28×28×8  → 32       23.0      26.4          14×14×32 → 64       27.2      17.2
#   28×28×16 → 32       39.9      28.9          7×7×64   → 128      19.0      13.2
#
# With few input channels the transforms cost more than the matmuls save; from 16 channels on
# Winograd wins (1.6× on the CNN's wide layer, whose training step went from 36 to 28 ms). So
# algorithm="auto" picks Winograd for 3×3 stride-1 kernels over ≥ WINOGRAD_MIN_CHANNELS input
# channels, on CPU.
#
# GPU (one NVIDIA H200, jax 0.11.2, scripts/conv_formulations.py; forward+backward with dX,
# float32, ms per step, best of 5; inside a lax.scan of 20 / as one jitted call per step):
#
#   layer              batch    patches        winograd       xla (cuDNN)
#                                scan   call    scan   call    scan   call
#   28×28×1  → 32       128     0.053  0.051   0.172  0.190   0.166  0.191
#   14×14×32 → 64       128     0.100  0.083   0.246  0.241   0.125  0.207
#   7×7×64   → 128      128     0.072  0.120   0.210  0.205   0.136  0.190
#   28×28×1  → 32      1024     0.214  0.204   0.903  0.901   0.526  0.505
#   14×14×32 → 64      1024     0.486  0.460   0.724  0.729   0.358  0.324
#   7×7×64   → 128     1024     0.265  0.248   0.604  0.609   0.214  0.225
#
#   whole CNN, one epoch of 6,400 examples (jbp's scan), ms: batch 128: patches 12.7,
#   winograd 32.1, xla 16.1; batch 1024: patches 9.8, winograd 18.2, xla 8.4
#
# At batch 128 every layer is a few tens of microseconds, launch-bound, and patches·matrix
# (one big matmul each way) wins; at batch 1024 cuDNN wins on the layers with many input
# channels (rows n·h_out·w_out = 200,704 and 50,176; at 25,088, batch 128, patches still won)
# while the one-channel first layer stays faster as patches. Winograd never wins on GPU (its
# 48 small matmuls and transforms are launches and memory passes). The scan costs nothing
# on GPU (unlike XLA's CPU convolution), so the epoch is a lax.scan on every backend. Hence
# "auto" on GPU: xla from XLA_MIN_CHANNELS channels and XLA_MIN_ROWS rows (between the
# measured 25,088 and 50,176), else patches: at batch 1024 that runs the CNN's first layer as
# patches and its second as xla, a 6.7–7.5 ms epoch against 9.8 (all patches) and 8.4 (all xla).
# TPUs were not measured: "auto" keeps patches.


# --------------------------------------------------------------------------- Conv
@dataclasses.dataclass(frozen=True)
class Conv(Layer):
    """A 2-D convolution Y = X ⋆ W + b over NHWC inputs, as patches·matrix (module docstring)
    or, for 3×3 kernels at stride 1, as Winograd's F(2×2, 3×3) (:mod:`jbp.winograd`).

    Args:
      features: output channels.
      kernel_size: (kh, kw) (an int k means (k, k)).
      strides: (sh, sw) (an int s means (s, s)).
      padding: ``"SAME"``, ``"VALID"`` or ((top, bottom), (left, right)), as in ``lax``.
      use_bias: add ``b``.
      initializer: ``"he"``, ``"lecun"`` or ``"glorot"`` with fan_in = kh·kw·c_in and
        fan_out = kh·kw·features; biases start at zero.
      algorithm: ``"patches"``, ``"winograd"`` (3×3 kernels at stride 1 only), ``"xla"``
        (XLA's convolution op forward, the backward as the two convolutions it is:
        :mod:`jbp.conv_xla`) or ``"auto"``: the measured fastest (:meth:`formulation`, the
        tables in the source). All compute the same convolution (to rounding) with a
        hand-written backward.

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
    algorithm: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "features", integer("features", self.features, owner="Conv"))
        object.__setattr__(self, "kernel_size", pair(self.kernel_size, "kernel_size", "Conv"))
        object.__setattr__(self, "strides", pair(self.strides, "strides", "Conv"))
        object.__setattr__(self, "padding", padding_arg(self.padding, "Conv"))
        object.__setattr__(self, "use_bias", flag("use_bias", self.use_bias, owner="Conv"))
        choice("initializer", self.initializer, ("he", "lecun", "glorot"), owner="Conv")
        choice("algorithm", self.algorithm, ALGORITHMS, owner="Conv")
        if self.algorithm == "winograd" and (self.kernel_size, self.strides) != ((3, 3), (1, 1)):
            raise ValueError(
                "Conv algorithm='winograd' needs kernel_size (3, 3) and strides (1, 1), got "
                f"kernel_size={self.kernel_size}, strides={self.strides}"
            )

    def formulation(self, c_in, rows=0):
        """How this layer runs for ``c_in`` input channels and ``rows`` = n·h_out·w_out output
        pixels: ``"patches"``, ``"winograd"`` or ``"xla"``; ``algorithm`` itself unless it is
        ``"auto"``, which follows the measurements above: on CPU Winograd for 3×3 stride-1
        kernels over ≥ WINOGRAD_MIN_CHANNELS channels, on GPU XLA's convolution for
        ≥ XLA_MIN_CHANNELS channels and ≥ XLA_MIN_ROWS rows, else (and on other, unmeasured
        backends) patches."""
        if self.algorithm != "auto":
            return self.algorithm
        backend = jax.default_backend()
        if backend == "cpu":
            winograd_fits = (self.kernel_size, self.strides) == ((3, 3), (1, 1))
            return "winograd" if winograd_fits and c_in >= WINOGRAD_MIN_CHANNELS else "patches"
        if backend == "gpu" and c_in >= XLA_MIN_CHANNELS and rows >= XLA_MIN_ROWS:
            return "xla"
        return "patches"

    def _one_channel(self, c_in):
        """Patches·matrix for one input channel, on the backends where the forward as kh·kw
        broadcast multiply-adds and Pᵀ as contiguous rows were measured faster."""
        return c_in == 1 and jax.default_backend() in ONE_CHANNEL_BACKENDS

    def uses_winograd(self, c_in):
        """Whether this layer runs as F(2×2, 3×3) for ``c_in`` input channels."""
        return self.formulation(c_in) == "winograd"

    def init(self, key, in_shape, dtype=jnp.float32):
        _, (ho, wo) = geometry("Conv", in_shape, self.kernel_size, self.strides, self.padding)
        c_in = shape_tuple(in_shape)[2]
        kh, kw = self.kernel_size
        var = INITIALIZERS[self.initializer](kh * kw * c_in, kh * kw * self.features)
        shape = (kh, kw, c_in, self.features)
        params = {"W": jax.random.normal(key, shape, dtype) * jnp.asarray(np.sqrt(var), dtype)}
        if self.use_bias:
            params["b"] = jnp.zeros((self.features,), dtype)
        return params, (), (ho, wo, self.features)

    def _parts(self, x):
        """The kh·kw strided slices Xᵢⱼ of the padded input, each (n, h_out, w_out, c_in)."""
        pads, out = geometry("Conv", x.shape[1:], self.kernel_size, self.strides, self.padding)
        return windows(pad_input(x, pads), self.kernel_size, self.strides, out)

    def _patches(self, x):
        parts = self._parts(x)
        return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)

    def forward(self, params, state, x, *, train=False, key=None):
        y, cache = self._forward(params, x)
        return y, cache, state

    @jit_method
    def _forward(self, params, x):
        w = params["W"]
        pads, (ho, wo) = geometry("Conv", x.shape[1:], self.kernel_size, self.strides, self.padding)
        how = self.formulation(w.shape[2], x.shape[0] * ho * wo)
        if how == "winograd":
            y, v = winograd.conv(x, w, pads)
            cache = (tuple(v), jnp.zeros((0, *x.shape[1:]), x.dtype))  # V, and x's shape
        elif how == "xla":
            y, cache = conv_xla.conv(x, w, self.strides, pads), x
        elif self._one_channel(w.shape[2]):
            # one input channel: P·Wₘ = Σₖ Xₖ·Wₘ[k] as kh·kw broadcast multiply-adds, one fused
            # loop that writes Y once (a matmul with K = kh·kw is memory-bound on its 12.8 MB
            # output for the CNN's first layer). The CNN's step on CPU: 23.9 vs 25.9 ms, best
            # of 10; its epoch on an H200 (batch 128 / 1024, two runs each): 11.4, 11.8 vs 12.0,
            # 12.0 ms / 6.7, 6.4 vs 6.7, 7.5 ms
            wm = w.reshape(-1, w.shape[-1])
            y = sum(part * wm[k] for k, part in enumerate(self._parts(x)))
            cache = x
        else:
            p = self._patches(x)  # (n, h_out, w_out, kh·kw·c_in)
            y = jnp.dot(p, w.reshape(-1, w.shape[-1]))  # Y = P·Wₘ
            # the cache is x: rebuilding P in the backward cost no measurable time (see the
            # table above; on a quiet machine too: 23.4 vs 23.8 ms for 14×14×32→64 at batch
            # 128, XLA shares the slices) and keeps the cache kh·kw times smaller
            cache = x
        if self.use_bias:
            y = y + params["b"]
        return y, cache

    @jit_method
    def backward(self, params, cache, dy):
        w = params["W"]
        kh, kw, c_in, f = w.shape
        grads = {"b": jnp.sum(dy, axis=(0, 1, 2))} if self.use_bias else {}  # Σ dY
        how = self.formulation(c_in, math.prod(dy.shape[:3]))
        if how == "winograd":
            v, shape = cache
            pads, _ = geometry(
                "Conv", shape.shape[1:], self.kernel_size, self.strides, self.padding
            )
            dw, dx = winograd.conv_backward(v, w, dy, pads, (dy.shape[0], *shape.shape[1:]))
            return {"W": dw, **grads}, dx
        x = cache
        pads, _ = geometry("Conv", x.shape[1:], self.kernel_size, self.strides, self.padding)
        if how == "xla":
            grads["W"], dx = conv_xla.conv_backward(x, w, dy, self.strides, pads)
            return grads, dx
        if self._one_channel(c_in):
            # dWₘ = Pᵀ·dY with Pᵀ built as kh·kw contiguous rows (a (n·h_out·w_out, kh·kw) P
            # is a slow 9-wide interleave; the CNN's step: 23.1 vs 23.9 ms, best of 10)
            pt = jnp.stack(self._parts(x)).reshape(kh * kw, -1)
            grads["W"] = jnp.dot(pt, dy.reshape(-1, f)).reshape(w.shape)
        else:
            p = self._patches(x)
            grads["W"] = jnp.dot(p.reshape(-1, p.shape[-1]).T, dy.reshape(-1, f)).reshape(w.shape)
        dp = jnp.dot(dy, w.reshape(-1, f).T)  # dP = dY·Wₘᵀ, (n, h_out, w_out, kh·kw·c_in)
        parts = [dp[..., k * c_in : (k + 1) * c_in] for k in range(kh * kw)]
        dx = place(parts, self.kernel_size, self.strides, pads, x.shape[1:3])
        return grads, dx


# ------------------------------------------------------------------------ reshape
@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """(n, *in_shape) -> (n, *shape), ``shape`` per example (one entry may be −1).

    Typically flat vectors to images: ``Reshape((28, 28, 1))`` before a :class:`Conv`.
    The backward reshapes dY back to the input's shape (carried by an empty cache array).
    """

    shape: tuple

    def __post_init__(self):
        s = (self.shape,) if is_integer(self.shape) else self.shape
        try:
            s = tuple(s)
        except TypeError:
            s = None
        if (
            not s
            or not all(is_integer(d) and (d >= 1 or d == -1) for d in s)
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
