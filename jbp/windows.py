"""Sliding windows over NHWC images: the shared machinery of convolution and pooling.

:class:`jbp.conv.Conv` and the pooling layers of :mod:`jbp.pool` all look at an image
x of shape (n, h, w, c) ("NHWC") through a window of (kh, kw) positions moved with strides
(sh, sw). This module checks their window arguments, computes the geometry, cuts the
windows out as strided slices and puts gradients back where the slices came from.

**Geometry.** Padding is ``"SAME"``, ``"VALID"`` or explicit ((top, bottom), (left, right))
with the semantics of ``lax`` (``lax.padtype_to_pads``: SAME gives ⌈h/s⌉ outputs and puts the
odd padding row at the bottom). With padded height hₚ = top + h + bottom the output has
h_out = ⌊(hₚ − kh)/s⌋ + 1 rows (and likewise for the width).

**Forward: the strided slices (im2col).** For each window offset (i, j), in row-major order,
the slice of the padded input

    Xᵢⱼ[n, p, q, :] = Xpad[n, i + s·p, j + s·q, :]          (n, h_out, w_out, c)

holds what every output position (p, q) sees at that offset; a convolution concatenates them
into its patches matrix, a pooling layer reduces over them.

**Backward: their transpose (col2im).** The slicing is linear, so its VJP puts each part's
cotangent back at the strided positions it was read from and crops the padding; where
windows overlap (strides < window) the contributions add up::

    dX = Σᵢⱼ scatter_(i,j)(dXᵢⱼ)        (one ``lax.pad`` per offset, interior padding s − 1)

References: CS231n, "Convolutional Neural Networks" notes and its im2col assignment;
Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016), for the
output sizes.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jbp.layers import shape_tuple
from jbp.util import is_integer


def jit_method(fn):
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


def pair(v, what, owner):
    """An int or a pair of ints -> a pair of positive ints (ValueError naming ``what``)."""
    given = v
    if is_integer(v):
        v = (v, v)
    try:
        v = tuple(v)
    except TypeError:
        v = None
    if v is None or len(v) != 2 or not all(is_integer(d) and d >= 1 for d in v):
        raise ValueError(
            f"{owner} {what} must be a positive int or a pair of them, got {what}={given!r}"
        )
    return (int(v[0]), int(v[1]))


def padding_arg(p, owner):
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
        or not all(is_integer(d) and d >= 0 for q in pairs for d in q)
    ):
        raise ValueError(
            f"{owner} padding must be 'SAME', 'VALID' or ((top, bottom), (left, right)) of "
            f"ints >= 0, got {p!r}"
        )
    return tuple((int(a), int(b)) for a, b in pairs)


def explicit_pads(padding, hw, window, strides):
    """The explicit ((top, bottom), (left, right)) for an input of spatial size ``hw``."""
    if isinstance(padding, str):
        return tuple(tuple(q) for q in lax.padtype_to_pads(hw, window, strides, padding))
    return padding


def output_hw(hw, window, strides, pads):
    """(h_out, w_out): ⌊(hₚ − k)/s⌋ + 1 per spatial axis."""
    return tuple(
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(hw, window, strides, pads, strict=True)
    )


def geometry(owner, in_shape, window, strides, padding):
    """(pads, out_hw) for an (h, w, c) input, or a ValueError saying what does not fit."""
    in_shape = shape_tuple(in_shape)
    if len(in_shape) != 3:
        raise ValueError(
            f"{owner} takes NHWC inputs: in_shape must be (h, w, c), got in_shape={in_shape}"
        )
    explicit = explicit_pads(padding, in_shape[:2], window, strides)
    out = output_hw(in_shape[:2], window, strides, explicit)
    if min(out) < 1:
        raise ValueError(
            f"{owner}: window {window} does not fit the input {in_shape[:2]} with padding "
            f"{explicit} (output size {out})"
        )
    return explicit, out


def windows(xp, window, strides, out_hw):
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


def place(parts, window, strides, pads, hw):
    """Σᵢⱼ of each part put back at the positions its slice was read from, padding cropped.

    The transpose of :func:`windows` (after padding): one ``lax.pad`` per offset with
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


def pad_input(x, pads, value=0.0):
    """x padded by ((top, bottom), (left, right)) with ``value`` (x itself when no padding)."""
    (pt, pb), (pl, pr) = pads
    if not any((pt, pb, pl, pr)):
        return x
    return lax.pad(x, jnp.asarray(value, x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
