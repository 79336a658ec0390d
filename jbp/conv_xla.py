"""A convolution as XLA's own convolution op, with its backward written out as the two
convolutions it is (``Conv(..., algorithm="xla")``).

Shapes as in :mod:`jbp.conv`: x (n, h, w, c_in) NHWC, W (kh, kw, c_in, c_out) HWIO, strides
(sh, sw), explicit pads ((t, b), (l, r)). Along one spatial axis, with padded length
hₚ = t + h + b and h_out = ⌊(hₚ − k)/s⌋ + 1, the forward is::

    Y[n, p, :] = Σᵢ Xpad[n, s·p + i, :] · W[i]                (one lax.conv_general_dilated)

and r = (hₚ − k) mod s trailing padded rows are never read. Its backward is two
convolutions (written out, not derived by ``jax.vjp``):

* **dX, the transposed convolution.** Each dY[p] reaches rows s·p + i of Xpad through W[i],
  so dX is dY with s − 1 zeros between its rows (lhs dilation s), padded by k − 1 − t in
  front and k − 1 − b + r behind, correlated with the kernel flipped in space and with its
  channel axes swapped (Wᵀ): dX[x] = Σᵢ dYdil[x + i] · W[k − 1 − i]ᵀ. The output has
  (h_out − 1)·s + 1 + 2(k − 1) − t − b + r − k + 1 = h rows. (A negative pad crops.)
* **dW, the correlation of X with dY.** dW[i] = Σ_{n,p} Xpad[n, s·p + i]ᵀ · dY[n, p]: a
  convolution over (h, w) in which the batch axis n is the contracted "feature" axis, c_in is
  the "batch" axis, and dY is the kernel, dilated by s (rhs dilation); padding (t, b − r)
  leaves exactly k outputs.

It is what cuDNN calls backward-data and backward-filter. On CPU, XLA's convolution is slow
inside a ``lax.scan`` (JAX issue 12868), which is why ``algorithm="auto"`` does not pick this
there (see the measurements in :mod:`jbp.conv`).

Reference: Dumoulin & Visin, "A guide to convolution arithmetic for deep learning" (2016),
section 4 (transposed convolution) and the relations for strided, padded convolutions.
"""

from jax import lax

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w, strides, pads):
    """Y = X ⋆ W for NHWC x, HWIO w, explicit ``pads`` ((t, b), (l, r))."""
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=DN)


def _unread(size, k, s, pad):
    """r: the trailing padded rows no window reaches, (hₚ − k) mod s."""
    return (pad[0] + size + pad[1] - k) % s


def conv_backward(x, w, dy, strides, pads):
    """(dW, dX) of :func:`conv` for the output gradient ``dy`` (module docstring)."""
    ks = w.shape[:2]
    rest = [_unread(*a) for a in zip(x.shape[1:3], ks, strides, pads, strict=True)]
    # dX: dY dilated by the stride, padded k − 1 − t / k − 1 − b + r, ⋆ flipped Wᵀ (HWOI)
    dx_pads = [(k - 1 - p[0], k - 1 - p[1] + r) for k, p, r in zip(ks, pads, rest, strict=True)]
    w_flip = w[::-1, ::-1]  # spatially flipped; "HWOI" swaps its channel axes
    dx = lax.conv_general_dilated(
        dy,
        w_flip,
        (1, 1),
        dx_pads,
        lhs_dilation=strides,
        dimension_numbers=("NHWC", "HWOI", "NHWC"),
    )
    # dW: x with c_in as the batch and n as the features, dY (dilated by s) as the kernel
    dw_pads = [(p[0], p[1] - r) for p, r in zip(pads, rest, strict=True)]
    dw = lax.conv_general_dilated(
        x, dy, (1, 1), dw_pads, rhs_dilation=strides, dimension_numbers=("CHWN", "IHWO", "HWNC")
    )
    return dw, dx
