"""Adapters: a plain JAX function or a Flax NNX module as a jbp model.

Both adapters give the model protocol of :mod:`jbp.model`, so ``jbp.fit`` (one device or
``devices=N``), the jbp optimizers, checkpoints, resuming and ``jbp.per_example_grads`` work
on them as on a ``jbp.MLP``. Their backward pass is JAX's: only the loss head's first delta
(BP1, with the mask and the 1/m) is jbp's hand-written one.

**A plain function** — :func:`from_function`::

    def apply(params, x):                       # a batch in, a batch of logits out
        return jnp.tanh(x @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]

    def init(key):                              # plain: the adapter casts to the run's dtype
        k1, k2 = jax.random.split(key)
        return {"W1": 0.1 * jax.random.normal(k1, (64, 32)), "b1": jnp.zeros(32),
                "W2": 0.1 * jax.random.normal(k2, (32, 10)), "b2": jnp.zeros(10)}

    model = jbp.adapters.from_function(apply, init, in_shape=(64,))
    state, history = jbp.fit(model, jbp.optim.adam(1e-2), data, key=jax.random.key(0))

It is a :class:`jbp.Network` of one :class:`jbp.Autodiff` layer: ``backward="manual"`` runs
the head's BP1 and then ``jax.vjp`` of ``apply``, ``backward="autodiff"`` is ``jax.grad`` of the
whole loss; both are offered, and they agree to rounding. Two calls with the same functions
give equal (and equally hashed) models; ``config()`` names the functions by
``module.qualname``, stable across processes (a lambda is only ``module.<lambda>``: use ``def``).

**A Flax NNX module** — :func:`from_nnx`::

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1, self.l2 = nnx.Linear(64, 32, rngs=rngs), nnx.Linear(32, 10, rngs=rngs)
        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    model = jbp.adapters.from_nnx(lambda rngs: Net(rngs), in_shape=(64,))
    # or from_nnx(Net(nnx.Rngs(0)), in_shape=(64,)): an instance, its parameters as they are

The module is split (``nnx.split``) into its parameters (``nnx.Param``: what the optimizer
trains), its RNG streams (``nnx.RngState``) and everything else (``nnx.BatchStat`` running
statistics, …): the jbp *model state*. Parameters and state are plain nested dicts of arrays
with string keys (``{"l1": {"kernel": …, "bias": …}, …}``), so jbp's optimizers tree-map over
them and orbax checkpoints them. Training runs the module in ``module.train()`` mode,
evaluation in ``module.eval()`` mode (running averages, no dropout): one graph definition per
mode, made once. With a factory ``lambda rngs: Net(rngs)`` the parameters are drawn from the
key of ``initialize``; with a module instance they are a snapshot of the instance's parameters
when the adapter was made, and the key is ignored.

* ``batch_coupled`` is detected: True when some submodule has ``use_running_average`` (an
  ``nnx.BatchNorm``); ``batch_coupled=`` overrides it. A batch-coupled module sees the padded
  rows of a last batch that does not fill up (the engine pads, the loss masks them), so they
  enter its batch statistics — unless its ``__call__`` takes a ``mask`` keyword: then it gets a
  bool array of shape (batch,), True for real examples, to hand on (``self.bn(h,
  mask=mask[:, None])``). Choose a batch size that divides the training set to avoid both.
* ``stochastic`` is True when the module holds RNG streams (``nnx.Dropout(…, rngs=rngs)``).
  Their keys are *not* model state: every training step reseeds every stream from the
  engine's key (``fold_in`` of the state's key with the step, stream by stream), so a resumed
  run draws the same masks, bit for bit, and the state holds no PRNG key arrays (which
  ``jbp.params_sha256`` and checkpoints cannot take). Evaluation is deterministic. Streams
  are told apart by their position in the module (path order), not by their names.
* ``backwards`` is ``("manual", "autodiff")``: ``"manual"`` is the head's BP1 followed by
  ``jax.vjp`` of the module's forward, ``"autodiff"`` ``jax.value_and_grad`` of the loss.
* The model compares and hashes by identity (it holds NNX graph definitions): a second
  ``from_nnx`` of the same module is another model and compiles its own code.

**When to write jbp layers instead.** The adapters are for bringing existing JAX code into
jbp's engine. A :class:`jbp.Layer` has its backward written by hand next to its forward, and
``jbp.check_layer`` verifies that backward against ``jax.vjp`` and finite differences, leaf by
leaf; an adapted model has no hand-written backward to check (``jbp.check.check_model`` still
compares its loss gradient with ``jax.grad`` and finite differences). Start with an adapter
(or a :class:`jbp.Autodiff` layer inside a network), then replace it piece by piece with
layers whose backward you wrote and checked.
"""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jbp import heads as heads_mod
from jbp import model as model_mod
from jbp.combinators import Autodiff
from jbp.layers import shape_tuple

BACKWARDS = model_mod.BACKWARDS  # ("manual", "autodiff"): both adapters offer both


def _cast_floats(tree, dtype):
    """Floating leaves to ``dtype``; integer and other leaves as they are."""

    def one(a):
        a = jnp.asarray(a)
        return a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a

    return jax.tree.map(one, tree)


# ------------------------------------------------------------------ plain function
@dataclasses.dataclass(frozen=True)
class InitFn:
    """``init(key) -> params`` as an :class:`jbp.Autodiff` initializer: called with ``(key,
    in_shape, dtype)``, it casts the floating leaves to ``dtype``. A named, comparable wrapper
    (not a lambda), so ``config()`` names the user's function and equal calls give equal models.
    """

    init: object

    def __call__(self, key, in_shape, dtype=jnp.float32):
        return _cast_floats(self.init(key), dtype)


@dataclasses.dataclass(frozen=True)
class FunctionModel(model_mod.Network):
    """A :class:`jbp.Network` made of one :class:`jbp.Autodiff` layer (see :func:`from_function`).

    ``backward="manual"``: the head's BP1, then ``jax.vjp`` of the function;
    ``backward="autodiff"``: ``jax.grad`` of the loss.
    """

    backwards = BACKWARDS


def from_function(apply, init, *, in_shape, loss="softmax_cross_entropy"):
    """A model from a plain JAX function and its initializer.

    Args:
      apply: ``apply(params, x) -> logits`` on a batch (``x`` of shape ``(batch, *in_shape)``,
        logits ``(batch, n_out)``), written with ``jnp``.
      init: ``init(key) -> params``, any pytree of arrays; floating leaves are cast to the
        run's dtype.
      in_shape: one example's input shape, e.g. ``(64,)``.
      loss: a loss head or its name (``"softmax_cross_entropy"``,
        ``"sigmoid_binary_cross_entropy"``, ``"squared_error"``), applied to the logits.

    Returns:
      a :class:`FunctionModel`; it raises ``ValueError`` at once when ``apply`` does not give
      logits of shape (batch, n_out) that fit the head.
    """
    if not callable(apply) or not callable(init):
        raise ValueError(
            f"from_function needs apply(params, x) and init(key), got apply={apply!r}, "
            f"init={init!r}"
        )
    name = getattr(apply, "__qualname__", None) or type(apply).__name__
    return FunctionModel(Autodiff(apply, init_fn=InitFn(init), name=name), loss, in_shape)


# ------------------------------------------------------------------------ Flax NNX
def _nnx():
    try:
        from flax import nnx
    except ImportError as e:  # pragma: no cover - flax is a dependency
        raise ImportError("jbp.adapters.from_nnx needs flax (pip install flax)") from e
    return nnx


def _key_str(path):
    return tuple(str(k) for k in path)


def _nest(items):
    """``{("a", "b"): v}`` -> ``{"a": {"b": v}}``."""
    out = {}
    for path, v in items:
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _lookup(tree, path, what):
    d = tree
    for i, k in enumerate(path):
        if not isinstance(d, dict) or k not in d:
            raise ValueError(f"{what} have no entry {'/'.join(path[: i + 1])}")
        d = d[k]
    return d


def _flat(state):
    """``((nnx path, Variable), …)`` of an ``nnx.State``, in path order."""
    return tuple(_nnx().to_flat_state(state))


def _pure(flat):
    """A plain nested dict with string keys of the variables' values."""
    return _nest((_key_str(p), v.get_value()) for p, v in flat)


def _abstract(flat):
    return _nest(
        (_key_str(p), jax.ShapeDtypeStruct(jnp.shape(v.get_value()), v.get_value().dtype))
        for p, v in flat
    )


def _float_dtype(tree):
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            return jnp.result_type(leaf)
    return None


def _has_use_running_average(module):
    nnx = _nnx()
    return any(hasattr(m, "use_running_average") for _, m in nnx.iter_modules(module))


@dataclasses.dataclass(frozen=True, eq=False)
class NNXModel:
    """A Flax NNX module with a jbp loss head (see :func:`from_nnx`). Compares by identity."""

    module_type: str
    head: object
    in_shape: tuple
    batch_coupled: bool
    stochastic: bool
    factory: object  # rngs -> module, or None (then ``snapshot`` holds the parameters)
    snapshot: object  # (params, state) of a module instance, or None
    graphdef_train: object
    graphdef_eval: object
    param_vars: tuple  # ((nnx path, Variable), …): templates, for nnx.merge
    rng_vars: tuple
    state_vars: tuple
    takes_mask: bool
    _out_shapes: dict = dataclasses.field(default_factory=dict, repr=False)

    backwards = BACKWARDS

    # -------------------------------------------------------------- structure
    @property
    def abstract_params(self):
        return _abstract(self.param_vars)

    @property
    def abstract_state(self):
        return _abstract(self.state_vars)

    def __repr__(self):
        shape = "None" if self.in_shape is None else self.in_shape
        return (
            f"NNXModel(module={self.module_type}, head={self.head!r}, in_shape={shape}, "
            f"n_params={self.n_params}, batch_coupled={self.batch_coupled}, "
            f"stochastic={self.stochastic})"
        )

    @property
    def n_params(self):
        return sum(int(np.prod(jnp.shape(v.get_value()))) for _, v in self.param_vars)

    def out_shape_for(self, example_shape, dtype=jnp.float32):
        """The logits' shape (without the batch axis) for one example of ``example_shape``."""
        k = (tuple(example_shape), jnp.dtype(dtype).name)
        if k not in self._out_shapes:
            x = jax.ShapeDtypeStruct((1, *k[0]), dtype)
            try:
                z = jax.eval_shape(
                    lambda p, s, x: self._forward(p, s, x, train=False, key=None, mask=None)[0],
                    self.abstract_params,
                    self.abstract_state,
                    x,
                )
            except Exception as e:  # noqa: BLE001 - the module's own error, one line of it
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(
                    f"the {self.module_type} module cannot take inputs of shape "
                    f"(batch, {', '.join(map(str, k[0]))}): {first}"
                ) from None
            if not hasattr(z, "shape"):
                raise ValueError(
                    f"the {self.module_type} module must return one array of logits, got {z!r}"
                )
            self._out_shapes[k] = tuple(z.shape[1:])
        return self._out_shapes[k]

    @property
    def out_shape(self):
        """The logits' shape without the batch axis (``None`` when made without in_shape)."""
        return None if self.in_shape is None else self.out_shape_for(self.in_shape)

    @property
    def n_out(self):
        return None if self.in_shape is None else self.out_shape[-1]

    def initialize(self, key, dtype=jnp.float32):
        """``(params, state)``: from the factory with ``nnx.Rngs(key)``, or the instance's
        parameters (the key is then ignored); floating leaves cast to ``dtype``."""
        if self.factory is None:
            params, state = self.snapshot
        else:
            nnx = _nnx()
            module = self.factory(nnx.Rngs(key))
            _, p, _, s = nnx.split(module, nnx.Param, nnx.RngState, ...)
            params, state = _pure(_flat(p)), _pure(_flat(s))
            self.check_params(params)
            if jax.tree.structure(state) != jax.tree.structure(self.abstract_state):
                raise ValueError(
                    f"the factory built a {self.module_type} with another state layout than "
                    f"the first time: {jax.tree.structure(state)} vs "
                    f"{jax.tree.structure(self.abstract_state)}"
                )
        return _cast_floats(params, dtype), _cast_floats(state, dtype)

    def init(self, key, dtype=jnp.float32):
        return self.initialize(key, dtype)[0]

    # ----------------------------------------------------------------- checks
    def check_params(self, params):
        """Raise ``ValueError`` unless ``params`` has this module's structure and shapes."""
        model_mod.check_like(params, self.abstract_params, f"the {self.module_type} module has")

    def check_x(self, x, split="the"):
        shape = tuple(np.shape(x))
        if self.in_shape is not None and shape[1:] != tuple(self.in_shape):
            raise ValueError(
                f"{split} inputs have shape {shape}, the model expects (batch, "
                f"{', '.join(map(str, self.in_shape))})"
            )
        if len(shape) < 1:
            raise ValueError(f"{split} inputs need a batch axis, got shape {shape}")

    def check_data(self, x, y, split="train"):
        """Host-side check of a split: input shape, non-empty, target shape and label range."""
        self.check_x(x, f"the {split}")
        m = np.shape(x)[0]
        if m == 0:
            raise ValueError(f"the {split} split is empty")
        dt = np.asarray(x).dtype if np.issubdtype(np.asarray(x).dtype, np.integer) else jnp.float32
        out = self.out_shape_for(np.shape(x)[1:], dt)
        self.head.check_out_shape(out)
        heads_mod.to_targets(np.asarray(y), m, out[-1], jnp.float32)

    def config(self):
        """JSON description of the model (what a checkpoint must match)."""

        def shapes(flat):
            return {"/".join(_key_str(p)): list(jnp.shape(v.get_value())) for p, v in flat}

        return {
            "model": type(self).__name__,
            "module": self.module_type,
            "head": model_mod.describe(self.head),
            "in_shape": None if self.in_shape is None else list(self.in_shape),
            "params": shapes(self.param_vars),
            "state": shapes(self.state_vars),
            "batch_coupled": self.batch_coupled,
            "stochastic": self.stochastic,
        }

    # ---------------------------------------------------------------- forward
    def _state(self, state):
        if state is not None:
            return state
        if self.state_vars:
            raise ValueError(
                f"this model has state ({len(self.state_vars)} arrays, e.g. running "
                f"statistics): pass state= (from model.initialize or the TrainState)"
            )
        return {}

    def _rebuild(self, flat, values, what):
        nnx = _nnx()
        return nnx.from_flat_state(
            [(p, v.replace(_lookup(values, _key_str(p), what))) for p, v in flat]
        )

    def _rngs(self, key, train):
        """The RNG streams' variables: each stream's key folded from ``key``, counts zero."""
        nnx = _nnx()
        if not self.rng_vars:
            return nnx.from_flat_state([])
        if key is None:
            if train:
                raise ValueError(
                    f"the {self.module_type} module draws random numbers in training (it has "
                    f"RNG streams): pass key= (jbp.fit passes one per step)"
                )
            key = jax.random.key(0)  # evaluation is deterministic: any key will do
        if not jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        out = []
        for i, (p, v) in enumerate(self.rng_vars):
            old = v.get_value()
            if isinstance(v, nnx.RngKey):
                k = jax.random.fold_in(key, i)
                if jnp.shape(old) != ():
                    k = jax.random.split(k, jnp.shape(old))
                if not jnp.issubdtype(old.dtype, jax.dtypes.prng_key):
                    k = jax.random.key_data(k).astype(old.dtype)
                out.append((p, v.replace(k)))
            else:  # RngCount and the like
                out.append((p, v.replace(jnp.zeros(jnp.shape(old), old.dtype))))
        return nnx.from_flat_state(out)

    def _x(self, params, x):
        dt = _float_dtype(params)
        if dt is not None and jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, dt)
        return jnp.asarray(x)

    def _forward(self, params, state, x, *, train, key, mask):
        """``(logits, new_state)``: merge, call the module in its train/eval mode, split."""
        nnx = _nnx()
        gd = self.graphdef_train if train else self.graphdef_eval
        module = nnx.merge(
            gd,
            self._rebuild(self.param_vars, params, "params"),
            self._rngs(key, train),
            self._rebuild(self.state_vars, state, "the model state"),
        )
        x = self._x(params, x)
        if self.takes_mask:
            m = jnp.ones(x.shape[:1], bool) if mask is None else jnp.asarray(mask) > 0
            z = module(x, mask=m)
        else:  # a batch-coupled module then sees padded rows (module docstring)
            z = module(x)
        if not train or not self.state_vars:
            return z, state
        _, _, _, s = nnx.split(module, nnx.Param, nnx.RngState, ...)
        new = dict(_flat(s))
        new_state = _nest(
            (
                _key_str(p),
                jnp.asarray(new[p].get_value()).astype(
                    jnp.result_type(_lookup(state, _key_str(p), "the model state"))
                ),
            )
            for p, _ in self.state_vars
        )
        return z, new_state

    def logits(self, params, x, *, state=None, train=False, key=None, mask=None):
        """``(Z, new_state)``: the module's output (the logits) and its updated state."""
        self.check_x(x, "x")
        return self._forward(params, self._state(state), x, train=train, key=key, mask=mask)

    def apply(self, params, x, *, state=None, train=False, key=None):
        """The model's output A = g(Z) (the head's output activation applied)."""
        return self.head.predict(self.logits(params, x, state=state, train=train, key=key)[0])

    def loss(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        """C = Σᵢ maskᵢ·Cᵢ / Σmask on the module's logits."""
        z, _ = self.logits(params, x, state=state, train=train, key=key, mask=mask)
        return self.head.loss(z, y, mask)

    def accuracy(self, params, x, y, mask=None, *, state=None):
        z, _ = self.logits(params, x, state=state, train=False, mask=mask)
        return self.head.accuracy(z, y, mask)

    def evaluate(self, params, state, x, y, mask=None):
        """``(loss, accuracy)`` in evaluation mode (running averages, no dropout)."""
        z, _ = self._forward(params, self._state(state), x, train=False, key=None, mask=mask)
        return self.head.loss(z, y, mask), self.head.accuracy(z, y, mask)

    # --------------------------------------------------------------- backward
    def _grad(self, params, state, x, y, mask, *, train, key, backward):
        state = self._state(state)

        def f(p):
            return self._forward(p, state, x, train=train, key=key, mask=mask)

        if backward == "manual":  # BP1 by the head, then the module's VJP
            z, vjp, new_state = jax.vjp(f, params, has_aux=True)
            loss, dz = self.head.loss_and_delta(z, y, mask)
            (grads,) = vjp(dz)
            return loss, grads, new_state
        if backward == "autodiff":

            def c(p):
                z, s = f(p)
                return self.head.loss(z, y, mask), s

            (loss, new_state), grads = jax.value_and_grad(c, has_aux=True)(params)
            return loss, grads, new_state
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")

    def loss_and_grad(self, params, x, y, mask=None, *, state=None, train=True, key=None):
        """``(loss, grads)``: the head's BP1 and ``jax.vjp`` of the module."""
        self.check_x(x, "x")
        return self._grad(params, state, x, y, mask, train=train, key=key, backward="manual")[:2]

    def train_grad(self, params, state, x, y, mask=None, *, key=None, backward="manual"):
        """``(loss, grads, new_state)`` of one training step (the engine's entry point)."""
        return self._grad(params, state, x, y, mask, train=True, key=key, backward=backward)


def from_nnx(module_or_factory, *, loss="softmax_cross_entropy", in_shape=None, batch_coupled=None):
    """A model from a Flax NNX module, or a factory ``rngs -> module``.

    Args:
      module_or_factory: an ``nnx.Module`` whose ``__call__(x)`` maps a batch to logits of
        shape (batch, n_out); or a factory ``lambda rngs: MyModule(..., rngs=rngs)``, called
        with ``nnx.Rngs(key)`` by ``initialize`` (so the key draws the parameters). With an
        instance, ``initialize`` returns a snapshot of its parameters taken now, whatever the
        key; the instance itself is never modified.
      loss: a loss head or its name, applied to the module's output.
      in_shape: one example's input shape; checked against the data when given, and then
        the logits' shape is checked against the head at once. ``None``: any input shape the
        module takes (found with ``jax.eval_shape`` when the data are checked).
      batch_coupled: override the detection (True when a submodule has
        ``use_running_average``, i.e. an ``nnx.BatchNorm``).

    Returns:
      an :class:`NNXModel`.
    """
    nnx = _nnx()
    if isinstance(module_or_factory, nnx.Module):
        factory, module = None, nnx.clone(module_or_factory)
    elif callable(module_or_factory):
        factory = module_or_factory
        module = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
        if not isinstance(module, nnx.Module):
            raise ValueError(
                f"from_nnx: the factory must return an nnx.Module, got {type(module).__name__}"
            )
    else:
        raise ValueError(
            f"from_nnx needs an nnx.Module or a factory rngs -> nnx.Module, got "
            f"{type(module_or_factory).__name__}"
        )
    _, p, r, s = nnx.split(module, nnx.Param, nnx.RngState, ...)
    param_vars, rng_vars, state_vars = _flat(p), _flat(r), _flat(s)
    if not param_vars:
        raise ValueError(f"the {type(module).__name__} module has no nnx.Param to train")
    snapshot = None if factory is not None else (_pure(param_vars), _pure(state_vars))
    module.train()
    graphdef_train = nnx.split(module, nnx.Param, nnx.RngState, ...)[0]
    module.eval()
    graphdef_eval = nnx.split(module, nnx.Param, nnx.RngState, ...)[0]
    if batch_coupled is None:
        batch_coupled = _has_use_running_average(module)
    try:
        takes_mask = "mask" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):
        takes_mask = False
    cls = type(module)
    model = NNXModel(
        module_type=f"{cls.__module__}.{cls.__qualname__}",
        head=heads_mod.get(loss),
        in_shape=None if in_shape is None else shape_tuple(in_shape),
        batch_coupled=bool(batch_coupled),
        stochastic=bool(rng_vars),
        factory=factory,
        snapshot=snapshot,
        graphdef_train=graphdef_train,
        graphdef_eval=graphdef_eval,
        param_vars=param_vars,
        rng_vars=rng_vars,
        state_vars=state_vars,
        takes_mask=takes_mask,
    )
    if model.in_shape is not None:
        model.head.check_out_shape(model.out_shape)
    return model
