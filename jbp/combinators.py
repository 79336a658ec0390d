"""Combinators: layers made of layers, each with its backward written from its children's.

Every combinator is itself a layer (the contract of :mod:`jbp.layers`), so they nest::

    Sequential(f, g):      y = g(f(x))               dx = f.bwd(g.bwd(dy))   (the chain rule)
    Residual(f, s):        y = f(x) + s(x)           dx = f.bwd(dy) + s.bwd(dy)
    FanOut(n):             y = (x, …, x)             dx = Σₖ dyₖ
    Parallel(f₁, …, fₙ):   y = (f₁(x₁), …, fₙ(xₙ))   dxₖ = fₖ.bwd(dyₖ)
    FanInSum():            y = Σₖ xₖ                 dxₖ = dy
    FanInConcat(axis):     y = concat(x₁, …, xₙ)     dxₖ = the k-th slice of dy
    Autodiff(fn, init):    y = fn(params, x)         (dparams, dx) = jax.vjp(fn, params, x)(dy)

``Autodiff`` is the escape hatch for a layer nobody has written a backward for yet: its
cache is the function ``jax.vjp`` returns (a pytree, so it crosses ``jit``).

A combinator is ``batch_coupled`` / ``stochastic`` when any child is; it passes ``mask`` to
its batch-coupled children and gives each stochastic child a key of its own (split from the
one it was given, by child position).

Reference: ``jax.example_libraries.stax`` (serial, parallel, FanOut, FanInSum, FanInConcat).
"""

import dataclasses

import jax
import jax.numpy as jnp

from jbp.layers import Layer, call_forward, shape_tuple
from jbp.util import integer


def _keys(key, n, children):
    if key is None or not any(getattr(c, "stochastic", False) for c in children):
        return (None,) * n
    return tuple(jax.random.split(key, n))


def _check_layers(kind, layers):
    if not layers:
        raise ValueError(f"{kind} needs at least one layer")
    for i, c in enumerate(layers):
        if not all(callable(getattr(c, m, None)) for m in ("init", "forward", "backward")):
            raise ValueError(
                f"{kind}: element {i} is not a layer (init, forward, backward), got {c!r}"
            )
    return tuple(layers)


class _Combinator(Layer):
    whole_batch_draws = True  # the children decide (layers.call_forward)

    @property
    def batch_coupled(self):
        return any(getattr(c, "batch_coupled", False) for c in self.layers)

    @property
    def stochastic(self):
        return any(getattr(c, "stochastic", False) for c in self.layers)

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        raise NotImplementedError


# --------------------------------------------------------------------- Sequential
@dataclasses.dataclass(frozen=True, init=False)
class Sequential(_Combinator):
    """Layers applied one after another; params and state are lists, one entry per layer."""

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        object.__setattr__(self, "layers", _check_layers("Sequential", layers))

    def init(self, key, in_shape, dtype=jnp.float32):
        params, states, shape = [], [], in_shape
        for k, c in zip(jax.random.split(key, len(self.layers)), self.layers, strict=True):
            p, s, shape = c.init(k, shape, dtype)
            params.append(p)
            states.append(s)
        return params, states, shape

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        caches, new_states = [], []
        keys = _keys(key, len(self.layers), self.layers)
        for c, p, s, k in zip(self.layers, params, state, keys, strict=True):
            x, cache, s = call_forward(c, p, s, x, train=train, key=k, mask=mask)
            caches.append(cache)
            new_states.append(s)
        return x, caches, new_states

    def backward(self, params, cache, dy):
        grads = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            grads[i], dy = self.layers[i].backward(params[i], cache[i], dy)
        return grads, dy


# ----------------------------------------------------------------------- Residual
@dataclasses.dataclass(frozen=True)
class Identity(Layer):
    """y = x; dx = dy."""

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        return x, (), state

    def backward(self, params, cache, dy):
        return (), dy


@dataclasses.dataclass(frozen=True)
class Residual(_Combinator):
    """y = f(x) + shortcut(x) (He et al. 2016); the shortcut defaults to the identity.

    Backward: both branches receive dy, and dx = f.bwd(dy) + shortcut.bwd(dy).
    Params ``{"f": …, "shortcut": …}``.
    """

    f: Layer
    shortcut: Layer = Identity()

    @property
    def layers(self):
        return (self.f, self.shortcut)

    def init(self, key, in_shape, dtype=jnp.float32):
        kf, ks = jax.random.split(key)
        pf, sf, out_f = self.f.init(kf, in_shape, dtype)
        ps, ss, out_s = self.shortcut.init(ks, in_shape, dtype)
        if tuple(out_f) != tuple(out_s):
            raise ValueError(
                f"Residual: the branch gives shape {out_f} but the shortcut {out_s}; they must "
                f"match to be added"
            )
        return {"f": pf, "shortcut": ps}, {"f": sf, "shortcut": ss}, out_f

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        kf, ks = _keys(key, 2, self.layers)
        yf, cf, sf = call_forward(
            self.f, params["f"], state["f"], x, train=train, key=kf, mask=mask
        )
        ys, cs, ss = call_forward(
            self.shortcut, params["shortcut"], state["shortcut"], x, train=train, key=ks, mask=mask
        )
        return yf + ys, (cf, cs), {"f": sf, "shortcut": ss}

    def backward(self, params, cache, dy):
        gf, dxf = self.f.backward(params["f"], cache[0], dy)
        gs, dxs = self.shortcut.backward(params["shortcut"], cache[1], dy)
        return {"f": gf, "shortcut": gs}, jax.tree.map(jnp.add, dxf, dxs)


# ---------------------------------------------------------------- fan-out / fan-in
@dataclasses.dataclass(frozen=True)
class FanOut(Layer):
    """y = (x,) * n: one input to n branches; the backward sums the branches' gradients."""

    n: int

    def __post_init__(self):
        message = f"FanOut needs a positive number of branches, got n={self.n!r}"
        object.__setattr__(self, "n", integer("n", self.n, message=message))

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), (shape_tuple(in_shape),) * self.n

    def forward(self, params, state, x, *, train=False, key=None):
        return (x,) * self.n, (), state

    def backward(self, params, cache, dy):
        total = dy[0]
        for d in dy[1:]:
            total = jax.tree.map(jnp.add, total, d)
        return (), total


@dataclasses.dataclass(frozen=True, init=False)
class Parallel(_Combinator):
    """y = (f₁(x₁), …, fₙ(xₙ)): one layer per input of a tuple; params/state are lists."""

    layers: tuple

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        object.__setattr__(self, "layers", _check_layers("Parallel", layers))

    def _split(self, what, value):
        if not isinstance(value, (tuple, list)) or len(value) != len(self.layers):
            raise ValueError(
                f"Parallel of {len(self.layers)} layers needs a tuple of {len(self.layers)} "
                f"{what}, got {value!r}"
            )
        return value

    def init(self, key, in_shape, dtype=jnp.float32):
        in_shape = self._split("input shapes", in_shape)
        out = [
            c.init(k, s, dtype)
            for c, k, s in zip(
                self.layers, jax.random.split(key, len(self.layers)), in_shape, strict=True
            )
        ]
        return [o[0] for o in out], [o[1] for o in out], tuple(tuple(o[2]) for o in out)

    def forward(self, params, state, x, *, train=False, key=None, mask=None):
        keys = _keys(key, len(self.layers), self.layers)
        out = [
            call_forward(c, p, s, xi, train=train, key=k, mask=mask)
            for c, p, s, xi, k in zip(self.layers, params, state, x, keys, strict=True)
        ]
        return tuple(o[0] for o in out), [o[1] for o in out], [o[2] for o in out]

    def backward(self, params, cache, dy):
        out = [
            c.backward(p, ci, d) for c, p, ci, d in zip(self.layers, params, cache, dy, strict=True)
        ]
        return [o[0] for o in out], tuple(o[1] for o in out)


@dataclasses.dataclass(frozen=True)
class FanInSum(Layer):
    """y = Σₖ xₖ over a tuple of equal shapes; dxₖ = dy."""

    def init(self, key, in_shape, dtype=jnp.float32):
        shapes = [tuple(s) for s in in_shape]
        if len(set(shapes)) != 1:
            raise ValueError(f"FanInSum needs inputs of one shape, got {shapes}")
        return (), (), shapes[0]

    def forward(self, params, state, x, *, train=False, key=None):
        total = x[0]
        for xi in x[1:]:
            total = total + xi
        return total, jnp.zeros((len(x), 0)), state  # an empty cache that counts the inputs

    def backward(self, params, cache, dy):
        return (), (dy,) * cache.shape[0]


@dataclasses.dataclass(frozen=True)
class FanInConcat(Layer):
    """y = concat(x₁, …, xₙ) along ``axis`` (of the example, so -1 is the feature axis).

    The backward cuts dy back into the inputs' widths.
    """

    axis: int = -1

    def init(self, key, in_shape, dtype=jnp.float32):
        shapes = [list(s) for s in in_shape]
        ax = self.axis % len(shapes[0])
        rest = {tuple(s[:ax] + s[ax + 1 :]) for s in shapes}
        if len(rest) != 1:
            raise ValueError(
                f"FanInConcat(axis={self.axis}) needs inputs equal but for that axis, got "
                f"{[tuple(s) for s in shapes]}"
            )
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return (), (), tuple(out)

    def _axis(self, ndim):  # of the batched array
        return self.axis if self.axis < 0 else self.axis + 1

    def forward(self, params, state, x, *, train=False, key=None):
        ax = self._axis(x[0].ndim)
        # the cache is an empty array whose shape carries the inputs' widths (static under jit)
        widths = tuple(xi.shape[ax] for xi in x)
        return jnp.concatenate(x, axis=ax), jnp.zeros((0, *widths)), state

    def backward(self, params, cache, dy):
        widths = cache.shape[1:]
        ax = self._axis(dy.ndim)
        cuts, at = [], 0
        for w in widths[:-1]:
            at += w
            cuts.append(at)
        return (), tuple(jnp.split(dy, cuts, axis=ax))


# ----------------------------------------------------------------------- Autodiff
@dataclasses.dataclass(frozen=True)
class Autodiff(Layer):
    """A layer from a plain JAX function, differentiated by ``jax.vjp`` (no hand-written backward).

    Args:
      fn: ``fn(params, x) -> y`` on a batch.
      init: ``init(key, in_shape, dtype) -> params`` (``None``: no parameters). The output
        shape is found by ``jax.eval_shape``.
      name: shown in reports.

    The cache is the function ``jax.vjp`` returns; the backward calls it. Use it for a layer
    whose backward you have not written yet, then swap in a hand-written one and let
    ``jbp.check_layer`` compare them.
    """

    fn: object
    init_fn: object = None
    name: str = None

    def init(self, key, in_shape, dtype=jnp.float32):
        params = () if self.init_fn is None else self.init_fn(key, in_shape, dtype)

        def probe(p):
            return self.fn(p, _zeros(in_shape, dtype))

        out = jax.eval_shape(probe, params)
        out_shape = jax.tree.map(lambda a: tuple(a.shape[1:]), out)
        return params, (), out_shape

    def forward(self, params, state, x, *, train=False, key=None):
        y, vjp = jax.vjp(self.fn, params, x)
        return y, vjp, state

    def backward(self, params, cache, dy):
        return cache(dy)


def _zeros(in_shape, dtype):
    if in_shape and all(isinstance(s, (tuple, list)) for s in in_shape):
        return tuple(_zeros(s, dtype) for s in in_shape)
    return jnp.zeros((1, *in_shape), dtype)
