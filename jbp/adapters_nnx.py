"""The Flax NNX adapter: an ``nnx.Module`` (or a factory of one) as a jbp model.

Usage (``from_nnx`` is re-exported as ``jbp.adapters.from_nnx``), with ``Net`` an
``nnx.Module`` whose ``__call__(x)`` returns a batch of logits::

    model = jbp.adapters.from_nnx(lambda rngs: Net(rngs), in_shape=(64,))  # a factory
    model = jbp.adapters.from_nnx(Net(nnx.Rngs(0)), in_shape=(64,))  # an instance, as it is

The model has the protocol of :mod:`jbp.model`, so ``jbp.fit`` (one device or
``devices=N``), the jbp optimizers, checkpoints, resuming and ``jbp.per_example_grads`` work
on it as on a ``jbp.MLP``.

**Parameters and state.** The module is split (``nnx.split``) into its parameters
(``nnx.Param``: what the optimizer trains), its RNG streams (``nnx.RngState``) and everything
else (``nnx.BatchStat`` running statistics, …): the jbp *model state*. Parameters and state
are plain nested dicts of arrays with string keys (``{"l1": {"kernel": …, "bias": …}, …}``;
:mod:`jbp.adapters_state` converts), so jbp's optimizers tree-map over them and orbax
checkpoints them. Training runs the module in ``module.train()`` mode, evaluation in
``module.eval()`` mode (running averages, no dropout): one graph definition per mode, made
once. With a factory ``lambda rngs: Net(rngs)`` the parameters are drawn from the key of
``initialize``; with a module instance they are a snapshot of the instance's parameters when
the adapter was made, and the key is ignored.

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
* The model compares and hashes by identity (it holds NNX graph definitions): a second
  ``from_nnx`` of the same module is another model and compiles its own code.

**Backward.** With Z = f(θ, X) the module's logits and C the head's loss (masked mean over
the batch), both backward passes give ∂C/∂θ; they agree to rounding::

    "manual"    dZ = ∂C/∂Z            the head's hand-written BP1 (mask and 1/m included)
                dθ = (∂Z/∂θ)ᵀ·dZ      ``jax.vjp`` of the module's forward, applied to dZ
    "autodiff"  dθ = ∇_θ C            ``jax.value_and_grad`` of the whole loss

The module's new state (batch statistics) is the forward's auxiliary output in both.
References: Nielsen, *Neural Networks and Deep Learning*, ch. 2 (BP1); the Flax NNX
documentation (``nnx.split`` / ``nnx.merge``, filters, RNG streams).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jbp import adapters_state as nnx_state
from jbp import heads as heads_mod
from jbp import model as model_mod
from jbp.layers import shape_tuple

BACKWARDS = model_mod.BACKWARDS  # ("manual", "autodiff")


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
        return nnx_state.abstract(self.param_vars)

    @property
    def abstract_state(self):
        return nnx_state.abstract(self.state_vars)

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
            params, state = nnx_state.pure_split(self.factory(nnx_state.nnx().Rngs(key)))
            self.check_params(params)
            if jax.tree.structure(state) != jax.tree.structure(self.abstract_state):
                raise ValueError(
                    f"the factory built a {self.module_type} with another state layout than "
                    f"the first time: {jax.tree.structure(state)} vs "
                    f"{jax.tree.structure(self.abstract_state)}"
                )
        return nnx_state.cast_floats(params, dtype), nnx_state.cast_floats(state, dtype)

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
        return {
            "model": type(self).__name__,
            "module": self.module_type,
            "head": model_mod.describe(self.head),
            "in_shape": None if self.in_shape is None else list(self.in_shape),
            "params": nnx_state.shapes(self.param_vars),
            "state": nnx_state.shapes(self.state_vars),
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

    def _rngs(self, key, train):
        """The RNG streams' variables: each stream's key folded from ``key``, counts zero."""
        if not self.rng_vars:
            return nnx_state.nnx().from_flat_state([])
        if key is None:
            if train:
                raise ValueError(
                    f"the {self.module_type} module draws random numbers in training (it has "
                    f"RNG streams): pass key= (jbp.fit passes one per step)"
                )
            key = jax.random.key(0)  # evaluation is deterministic: any key will do
        return nnx_state.reseeded_rngs(self.rng_vars, key)

    def _forward(self, params, state, x, *, train, key, mask):
        """``(logits, new_state)``: merge, call the module in its train/eval mode, split."""
        module = nnx_state.nnx().merge(
            self.graphdef_train if train else self.graphdef_eval,
            nnx_state.rebuild(self.param_vars, params, "params"),
            self._rngs(key, train),
            nnx_state.rebuild(self.state_vars, state, "the model state"),
        )
        x = nnx_state.cast_input(x, params)
        if self.takes_mask:
            m = jnp.ones(x.shape[:1], bool) if mask is None else jnp.asarray(mask) > 0
            z = module(x, mask=m)
        else:  # a batch-coupled module then sees padded rows (module docstring)
            z = module(x)
        if not train or not self.state_vars:
            return z, state
        return z, nnx_state.updated_state(module, self.state_vars, state)

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
    factory, module = nnx_state.module_of(module_or_factory)
    _, p, r, s = nnx_state.split(module)
    param_vars, rng_vars, state_vars = nnx_state.flat(p), nnx_state.flat(r), nnx_state.flat(s)
    if not param_vars:
        raise ValueError(f"the {type(module).__name__} module has no nnx.Param to train")
    snapshot = (
        None if factory is not None else (nnx_state.pure(param_vars), nnx_state.pure(state_vars))
    )
    graphdef_train, graphdef_eval = nnx_state.graphdefs(module)
    if batch_coupled is None:
        batch_coupled = nnx_state.has_use_running_average(module)
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
        takes_mask=nnx_state.takes_mask(module),
    )
    if model.in_shape is not None:
        model.head.check_out_shape(model.out_shape)
    return model
