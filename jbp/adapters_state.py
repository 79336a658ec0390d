"""Parameters and state of adapted models as plain nested dicts, and their NNX plumbing.

The adapters of :mod:`jbp.adapters` hand jbp's engine, optimizers and checkpoints plain
pytrees: floating leaves in the run's dtype (:func:`cast_floats`; inputs follow the
parameters, :func:`cast_input`) and, for a Flax NNX module, nested dicts of arrays with
string keys (``{"l1": {"kernel": …, "bias": …}}``) instead of ``nnx.State`` objects. This
module converts between the two and reads what the NNX adapter needs off a module:

* :func:`split` is ``nnx.split(module, nnx.Param, nnx.RngState, ...)``: graph definition,
  parameters, RNG streams and the rest (the model state);
* :func:`flat`, :func:`pure`, :func:`abstract`, :func:`shapes` read such an ``nnx.State`` as
  ((path, Variable), …) pairs, as plain values, as shape-dtype structs or as shapes by
  path; :func:`pure_split` gives a module's (params, state) as plain dicts;
* :func:`rebuild` puts plain values back into those Variables, for ``nnx.merge``;
* :func:`reseeded_rngs` gives a module's RNG streams fresh keys derived from one key:
  stream k gets ``fold_in(key, k)`` (k its position in path order) and its count restarts at
  0, so the keys are a function of the engine's key alone and never part of the state;
* :func:`updated_state` reads the non-parameter state (batch statistics, …) back out of a
  module after a training call, in the dtypes the state had before;
* :func:`module_of`, :func:`graphdefs`, :func:`has_use_running_average` and
  :func:`takes_mask` inspect the module (or factory) that ``from_nnx`` was given.

Nothing here is differentiated by hand: the adapters' gradients are ``jax.vjp`` of the
module's forward (or ``jax.grad`` of the loss), and merging and splitting are pytree
rearrangements that ``jax.vjp`` sees through (the identity on the values).

Flax is imported only when an NNX function runs (:func:`nnx`), so importing this module
(and ``jbp``) does not import it.
"""

import inspect

import jax
import jax.numpy as jnp


def cast_floats(tree, dtype):
    """Floating leaves to ``dtype``; integer and other leaves as they are."""

    def one(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(one, tree)


def float_dtype(tree):
    """The dtype of the first floating leaf of ``tree``, or ``None``."""
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.result_type(leaf)
    return None


def cast_input(x, params):
    """A floating input in the parameters' floating dtype; any other input as it is."""
    dt = float_dtype(params)
    if dt is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating):
        return jnp.asarray(x, dt)
    return jnp.asarray(x)


def nest(items):
    """``{("a", "b"): v}`` -> ``{"a": {"b": v}}``."""
    out = {}
    for path, v in items:
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def lookup(tree, path, what):
    """``tree[path[0]][path[1]]…``, or a ValueError naming the first missing entry."""
    d = tree
    for i, k in enumerate(path):
        if not isinstance(d, dict) or k not in d:
            raise ValueError(f"{what} have no entry {'/'.join(path[: i + 1])}")
        d = d[k]
    return d


# ------------------------------------------------------------------------ Flax NNX
def nnx():
    """``flax.nnx``, imported on first use."""
    try:
        from flax import nnx
    except ImportError as e:  # flax is the optional extra jbp[nnx]
        raise ImportError(
            "jbp.adapters.from_nnx needs flax, an optional dependency: pip install 'jbp[nnx]' "
            "(or pip install flax)"
        ) from e
    return nnx


def key_str(path):
    """An NNX path as a tuple of strings (the keys of the plain dicts)."""
    return tuple(str(k) for k in path)


def split(module):
    """``(graphdef, params, rng streams, rest)`` of a module: ``nnx.split`` by these filters."""
    n = nnx()
    return n.split(module, n.Param, n.RngState, ...)


def flat(state):
    """``((nnx path, Variable), …)`` of an ``nnx.State``, in path order."""
    return tuple(nnx().to_flat_state(state))


def pure(flat_vars):
    """A plain nested dict with string keys of the variables' values."""
    return nest((key_str(p), v.get_value()) for p, v in flat_vars)


def abstract(flat_vars):
    """The nested dict of ``jax.ShapeDtypeStruct``\\ s of the variables' values."""
    return nest(
        (key_str(p), jax.ShapeDtypeStruct(jnp.shape(v.get_value()), v.get_value().dtype))
        for p, v in flat_vars
    )


def pure_split(module):
    """``(params, state)`` of a module as plain nested dicts (its RNG streams left out)."""
    _, p, _, s = split(module)
    return pure(flat(p)), pure(flat(s))


def shapes(flat_vars):
    """``{"l1/kernel": [shape], …}``: the variables' shapes by their paths (for ``config``)."""
    return {"/".join(key_str(p)): list(jnp.shape(v.get_value())) for p, v in flat_vars}


def rebuild(flat_vars, values, what):
    """An ``nnx.State`` of the template variables holding the values of the dict ``values``."""
    return nnx().from_flat_state(
        [(p, v.replace(lookup(values, key_str(p), what))) for p, v in flat_vars]
    )


def _prng_key(key):
    if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    return key


def reseeded_rngs(rng_vars, key):
    """An ``nnx.State`` of the RNG streams: stream k keyed ``fold_in(key, k)``, counts at 0.

    A key variable keeps its shape (split to it) and its representation (typed keys, or raw
    ``uint32`` key data); ``key`` itself may be either.
    """
    n = nnx()
    key = _prng_key(key)
    out = []
    for i, (p, v) in enumerate(rng_vars):
        old = v.get_value()
        if isinstance(v, n.RngKey):
            k = jax.random.fold_in(key, i)
            if jnp.shape(old) != ():
                k = jax.random.split(k, jnp.shape(old))
            if not jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
                k = jax.random.key_data(k).astype(old.dtype)
            out.append((p, v.replace(k)))
        else:  # RngCount and the like
            out.append((p, v.replace(jnp.zeros(jnp.shape(old), old.dtype))))
    return n.from_flat_state(out)


def updated_state(module, state_vars, old_state):
    """The module's non-parameter state as a plain dict, each leaf in its ``old_state`` dtype."""
    new = dict(flat(split(module)[3]))
    return nest(
        (
            key_str(p),
            jnp.asarray(new[p].get_value()).astype(
                jnp.result_type(lookup(old_state, key_str(p), "the model state"))
            ),
        )
        for p, _ in state_vars
    )


# ------------------------------------------------------------ reading a module
def module_of(module_or_factory):
    """``(factory, module)``: the factory (or None) and a module to read the structure from.

    An instance is cloned (never modified); a factory is traced with ``nnx.eval_shape``, so
    no parameters are drawn.
    """
    n = nnx()
    if isinstance(module_or_factory, n.Module):
        return None, n.clone(module_or_factory)
    if not callable(module_or_factory):
        raise ValueError(
            f"from_nnx needs an nnx.Module or a factory rngs -> nnx.Module, got "
            f"{type(module_or_factory).__name__}"
        )
    module = n.eval_shape(lambda: module_or_factory(n.Rngs(0)))
    if not isinstance(module, n.Module):
        raise ValueError(
            f"from_nnx: the factory must return an nnx.Module, got {type(module).__name__}"
        )
    return module_or_factory, module


def graphdefs(module):
    """The module's graph definitions in training mode and in evaluation mode."""
    module.train()
    graphdef_train = split(module)[0]
    module.eval()
    return graphdef_train, split(module)[0]


def has_use_running_average(module):
    """Whether a submodule has ``use_running_average`` (an ``nnx.BatchNorm``)."""
    return any(hasattr(m, "use_running_average") for _, m in nnx().iter_modules(module))


def takes_mask(module):
    """Whether the module's ``__call__`` has a ``mask`` parameter."""
    try:
        return "mask" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        return False
