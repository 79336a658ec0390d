"""The functions a backward check evaluates, jitted once and reused.

A layer's forward at fixed state, ``train`` flag and key, its ``jax.vjp`` for a list of
cotangents, and its forward+backward in one program (what a jitted training step runs) are
jitted with the layer and ``train`` as static arguments. A layer is hashable (an unhashable
one is wrapped and compared by identity), so a check compiles a handful of programs and a
second check of an equal layer (a redraw, a grid point, a repeated test) reuses them. A
model's loss, ``jax.grad`` of it and its ``loss_and_grad`` are jitted once per check.
"""

import functools

import jax

from jbp.check_trees import split_arrays


class _ById:
    """A static-argument handle for an unhashable layer (compared by identity)."""

    def __init__(self, obj):
        self.obj = obj

    def __hash__(self):
        return id(self.obj)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.obj is self.obj


def _unwrap(h):
    return h.obj if isinstance(h, _ById) else h


def _forward(h, train, p, x, state, key, mask=None):
    if mask is None:
        return _unwrap(h).forward(p, state, x, train=train, key=key)
    return _unwrap(h).forward(p, state, x, train=train, key=key, mask=mask)


# Jitted with the layer and ``train`` static: a layer is hashable, so the compilations are
# reused across checks of the same layer (redraws, grids, repeated tests).
@functools.partial(jax.jit, static_argnums=(0, 1))
def _y(h, train, P, state, key, mask):
    return _forward(h, train, *P, state, key, mask)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _vjps(h, train, p, x, state, key, mask, dys):
    _, vjp_fn = jax.vjp(lambda p, x: _forward(h, train, p, x, state, key, mask)[0], p, x)
    return [vjp_fn(dy) for dy in dys]


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fwd_bwd(h, train, p, x, state, key, mask, dy):
    """Forward then backward in one program, as a jitted training step runs them."""
    return _unwrap(h).backward(p, _forward(h, train, p, x, state, key, mask)[1], dy)


class LayerFns:
    """The layer's functions at a fixed state, train flag, key and (batch-coupled layers)
    mask of the real rows (``None``: every row real, as in a full batch)."""

    def __init__(self, layer, state, fkey, train, mask=None):
        try:
            hash(layer)
            self.h = layer
        except TypeError:
            self.h = _ById(layer)
        self.layer, self.state, self.fkey, self.train = layer, state, fkey, train
        self.mask = mask

    def forward(self, p, x):  # eager
        return _forward(self.h, self.train, p, x, self.state, self.fkey, self.mask)

    def y(self, P):
        """The output for ``P = (params, x)``, jitted."""
        return _y(self.h, self.train, P, self.state, self.fkey, self.mask)

    def y_with_key(self, P, key):
        """The output for ``P = (params, x)`` with another key, jitted."""
        return _y(self.h, self.train, P, self.state, key, self.mask)

    def vjps(self, p, x, dys):
        """``jax.vjp`` of the forward, applied to each cotangent: ``[(dparams, dx)]``."""
        return _vjps(self.h, self.train, p, x, self.state, self.fkey, self.mask, dys)

    def fwd_bwd(self, p, x, dy):
        """The jitted forward+backward: ``(dparams, dx)``."""
        return _fwd_bwd(self.h, self.train, p, x, self.state, self.fkey, self.mask, dy)

    def vmap_bwd(self, p, cache, dys):
        """``jax.vmap`` of the backward over a stack of cotangents (the cache shared)."""
        arrays, rebuild = split_arrays(cache)
        run = jax.jit(jax.vmap(lambda a, dy: self.layer.backward(p, rebuild(a), dy), (None, 0)))
        return run(arrays, dys)


class ModelFns:
    """A model's loss, ``jax.grad`` of it and its ``loss_and_grad`` at fixed data and key."""

    def __init__(self, model, x, y, mask, state, train, key):
        self.model, self.x, self.y, self.mask = model, x, y, mask
        self.state, self.train, self.key = state, train, key

        def loss(p, x, y, mask, key):
            return model.loss(p, x, y, mask, state=state, train=train, key=key)

        self.loss = jax.jit(lambda p: loss(p, x, y, mask, key))
        self._grad = jax.jit(jax.grad(loss))

    def grad(self, p):
        """``jax.grad`` of the loss (the reference)."""
        return self._grad(p, self.x, self.y, self.mask, self.key)

    def manual(self, p):
        """``(loss, grads)`` from the model's ``loss_and_grad``, jitted when it can be."""
        model, state, train = self.model, self.state, self.train

        def manual(p, x, y, mask, key):
            out = model.loss_and_grad(p, x, y, mask, state=state, train=train, key=key)
            return out[0], out[1]

        args = (p, self.x, self.y, self.mask, self.key)
        try:  # one compilation instead of one per eager op
            return jax.jit(manual)(*args)
        except Exception:  # noqa: BLE001 - not jittable: run it as it is
            return manual(*args)
