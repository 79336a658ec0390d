"""``Embedding``: a lookup table of vectors indexed by integer token ids, with its backward.

Forward, for ids of shape (batch, *) and a table W of shape (n_embed, features)::

    y[b, …] = W[ids[b, …]]                          -> (batch, *, features)

Backward: the lookup is a selection, so row k of dW collects the cotangents of every
position that looked up k; a token that occurs several times gets the *sum* of their dy::

    dW = 0;  dW[ids[b, …]] += dy[b, …]   (a scatter-add, ``.at[ids].add``)

The ids are integers, so there is no gradient with respect to the input: dx is an array of
JAX's ``float0`` dtype with the ids' shape, the cotangent ``jax.vjp`` itself gives an integer
input.

Reference: the one-hot view of a lookup, W[k] = onehot(k)·W, so dW = onehot(ids)ᵀ·dY (the
dense layer's dW = Xᵀ·dZ); Bengio et al., "A Neural Probabilistic Language Model", JMLR 3
(2003).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jbp.layers import Layer
from jbp.util import integer, is_integer


@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    """Token ids (batch, *) -> vectors (batch, *, features), one row of a learned table each.

    Args:
      n_embed: number of rows (the vocabulary size); valid ids are 0 … n_embed − 1.
      features: length of each vector.

    Params ``{"W": (n_embed, features)}``, drawn from N(0, 1/features) (flax's default
    ``nnx.Embed`` initialisation). ``in_shape`` is the shape of one example's ids, e.g.
    ``(T,)`` for a sequence of T tokens or ``()`` for one token; the input must have an
    integer dtype.

    Backward: ``dW = zeros.at[ids].add(dy)`` (repeated ids accumulate); dx is a ``float0``
    array of the ids' shape (integers have no gradient; ``jax.vjp`` gives the same).

    Ids out of range: when the ids are concrete (an eager call) an id outside
    [0, n_embed) — negative ids included; they are *not* counted from the end — raises
    ``ValueError``. Inside ``jit`` they cannot be checked: such an id looks up a zero vector
    and receives no gradient (forward and backward agree, so the backward is still the VJP).
    """

    n_embed: int
    features: int

    def __post_init__(self):
        object.__setattr__(self, "n_embed", integer("n_embed", self.n_embed, owner="Embedding"))
        object.__setattr__(self, "features", integer("features", self.features, owner="Embedding"))

    def init(self, key, in_shape, dtype=jnp.float32):
        given = in_shape
        try:
            in_shape = (int(in_shape),) if is_integer(in_shape) else tuple(in_shape)
        except TypeError:  # a bool, a float, None: not a shape
            in_shape = None
        if in_shape is None or not all(is_integer(s) and s >= 1 for s in in_shape):
            raise ValueError(
                f"Embedding in_shape must be the ids' shape (positive integers, or () for one "
                f"id per example), got in_shape={given if in_shape is None else in_shape}"
            )
        in_shape = tuple(int(s) for s in in_shape)
        std = jnp.asarray(1 / np.sqrt(self.features), dtype)
        w = jax.random.normal(key, (self.n_embed, self.features), dtype) * std
        return {"W": w}, (), (*in_shape, self.features)

    def _valid(self, ids):
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"Embedding takes integer token ids, got an input of dtype {ids.dtype}"
            )
        if not isinstance(ids, jax.core.Tracer) and ids.size:
            lo, hi = int(jnp.min(ids)), int(jnp.max(ids))
            if lo < 0 or hi >= self.n_embed:
                raise ValueError(
                    f"Embedding ids must be in [0, {self.n_embed - 1}] (n_embed={self.n_embed}), "
                    f"got ids in [{lo}, {hi}]"
                )
        return (ids >= 0) & (ids < self.n_embed)

    def forward(self, params, state, x, *, train=False, key=None):
        ids = jnp.asarray(x)
        valid = self._valid(ids)
        rows = jnp.take(params["W"], jnp.clip(ids, 0, self.n_embed - 1), axis=0)
        return jnp.where(valid[..., None], rows, 0), ids, state

    def backward(self, params, cache, dy):
        ids = cache
        valid = (ids >= 0) & (ids < self.n_embed)
        dy = jnp.where(valid[..., None], dy, 0).reshape(-1, self.features)
        safe = jnp.clip(ids, 0, self.n_embed - 1).reshape(-1)
        dw = jnp.zeros_like(params["W"]).at[safe].add(dy)
        return {"W": dw}, np.zeros(ids.shape, jax.dtypes.float0)
