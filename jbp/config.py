"""A training run as one typed, frozen value: :class:`RunConfig`, and the data sets' presets.

``jbp train``'s flags, ``jbp bench``'s recipes and a Python script all describe a run the same
way::

    cfg = jbp.config.RunConfig(data="fashion-mnist", optimizer="adam", optimizer_options=
                               (("b2", 0.99),), schedule="staircase",
                               schedule_options=(("factor", 0.5), ("every_epochs", 2)))
    run = jbp.recipe.build(cfg)      # the model, optimizer, data, batch size, epochs, dtype

A field left ``None`` takes the data set's :class:`Preset` (per model kind: the CNN has its own
batch size, epochs and learning rate); a value given always wins. :func:`resolve` fills them
in, so a resolved config says everything about a run. :func:`compat_key` derives from it what
a checkpoint records and ``--resume`` must match — the one place that decides it.

Options of optimizers and schedules are ``(key, value)`` pairs (a frozen, hashable form of
keyword arguments); their accepted keys and defaults are the functions' own, see
:mod:`jbp.options`.
"""

import dataclasses

from jbp.stopping import DIVERGENCE_THRESHOLD, check_threshold
from jbp.util import INT32_MAX, SEED_MAX, choice, integer, real

DTYPES = ("float32", "float64")
MODEL_KINDS = ("mlp", "cnn")  # or "module:function"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What defines a training run (not where it is saved: see :class:`jbp.run.Run`)."""

    data: str = "digits"  # digits | moons | fashion-mnist | idx:DIR (see jbp.data.load)
    model: str = "mlp"  # mlp | cnn | module:function returning a jbp model
    layers: tuple | None = None  # MLP widths; a None end is inferred from the data; None: preset
    activation: str | tuple | None = None  # MLP hidden activation(s); None: preset
    output: str | None = None  # MLP output activation; None: preset (softmax)
    cost: str | None = None  # MLP cost; None: preset (cross_entropy)
    dtype: str = "float32"  # parameters and data: float32 | float64
    optimizer: str | None = None  # a jbp.optim name; None: preset (adam)
    optimizer_options: tuple = ()  # ((key, value), …) for it, e.g. (("b2", 0.99),)
    lr: float | None = None  # learning rate (a schedule's lr0); None: preset
    schedule: str | None = None  # a jbp.schedules name; None: preset (constant)
    schedule_options: tuple = ()  # ((key, value), …); None schedule: the preset's options
    batch_size: int | str | None = None  # N, or "full" (batch gradient descent); None: preset
    epochs: int | None = None  # train up to this epoch; None: preset
    seed: int = 0  # jax.random.key(seed): initial parameters, shuffling, dropout
    backward: str = "manual"  # manual (hand-written BP1–BP4) | autodiff (jax.vjp)
    patience: int | None = None  # early stopping after this many epochs without improvement
    # stop (DivergenceError) when an epoch's train loss exceeds this × the initial loss;
    # 1000 by default (see jbp.stopping.DIVERGENCE_THRESHOLD); None: off (non-finite still stops)
    divergence_threshold: float | None = DIVERGENCE_THRESHOLD
    devices: int | None = None  # split every mini-batch over N devices; None: one, plain engine
    parallel: str = "shard_map"  # how, with devices: shard_map | pmap

    def __post_init__(self):
        choice("dtype", self.dtype, DTYPES)
        integer("seed", self.seed, minimum=0, maximum=SEED_MAX)  # jax.random.key: 32 bits
        for name in ("epochs", "patience", "devices"):  # int32 counters
            if getattr(self, name) is not None:
                integer(name, getattr(self, name), maximum=INT32_MAX)
        check_threshold(self.divergence_threshold)
        if self.lr is not None:
            real("lr", self.lr, low=0, low_open=True)
        if self.batch_size is not None and self.batch_size != "full":
            integer("batch_size", self.batch_size, maximum=INT32_MAX,
                    message=_BATCH_MESSAGE.format(self.batch_size))  # fmt: skip
        for name in ("optimizer_options", "schedule_options"):
            pairs = getattr(self, name)
            if isinstance(pairs, dict):  # accept a dict, keep a hashable tuple
                object.__setattr__(self, name, tuple(pairs.items()))
            elif not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
                raise ValueError(f"{name} must be (key, value) pairs, got {name}={pairs!r}")
        for name in ("layers", "activation"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def is_mlp(self) -> bool:
        return self.model == "mlp"


_BATCH_MESSAGE = (
    "batch_size must be a positive integer or 'full', got {!r} (accepted: 1 … "
    + str(INT32_MAX)
    + ", or 'full')"
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A data set's defaults (per model kind): what a run uses for the fields left ``None``."""

    hidden: tuple = (30,)  # MLP hidden widths (the input and output come from the data)
    activation: str = "sigmoid"
    output: str = "softmax"
    cost: str = "cross_entropy"
    batch_size: int | str = 64
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    schedule_options: tuple = ()


_IMAGES = Preset(hidden=(256,), activation="relu", batch_size=128, epochs=10, lr=1e-3)
#: (data set, model kind) -> defaults; "idx" stands for every idx:DIR folder.
PRESETS = {
    ("digits", "mlp"): Preset(hidden=(30,), activation="sigmoid", epochs=30, lr=1e-2),
    ("moons", "mlp"): Preset(
        hidden=(5, 2),
        activation="relu",
        output="sigmoid",
        cost="binary_cross_entropy",
        epochs=1000,
        lr=7e-3,
    ),
    ("fashion-mnist", "mlp"): _IMAGES,
    ("idx", "mlp"): _IMAGES,
    # the built-in CNN (jbp.models.cnn): 92 % on Fashion-MNIST needs the lr cut late
    ("digits", "cnn"): Preset(batch_size=64, epochs=15, lr=3e-3),
    ("fashion-mnist", "cnn"): Preset(
        batch_size=128,
        epochs=8,
        lr=1e-3,
        schedule="piecewise",
        schedule_options=(("boundaries_epochs", (6,)), ("values", (1e-4,))),
    ),
    ("idx", "cnn"): Preset(batch_size=128, epochs=8, lr=1e-3),
}


def preset(config: RunConfig) -> Preset:
    """The defaults for ``config``'s data set and model kind (a user's model: the MLP's)."""
    data = "idx" if config.data.startswith("idx:") else config.data
    kind = "cnn" if config.model == "cnn" else "mlp"
    return PRESETS.get((data, kind), PRESETS.get((data, "mlp"), Preset()))


def resolve(config: RunConfig) -> RunConfig:
    """``config`` with every ``None`` field taken from its :func:`preset` (a given value wins).

    The MLP fields stay ``None`` for other models (they define their own layers);
    ``layers`` keeps ``None`` ends, which :func:`jbp.recipe.build` infers from the data.
    """
    p = preset(config)
    fill = {
        "optimizer": config.optimizer or p.optimizer,
        "lr": config.lr if config.lr is not None else p.lr,
        "batch_size": config.batch_size if config.batch_size is not None else p.batch_size,
        "epochs": config.epochs if config.epochs is not None else p.epochs,
    }
    if config.schedule is None:
        fill.update(
            schedule=p.schedule, schedule_options=config.schedule_options or p.schedule_options
        )
    if config.is_mlp:
        fill.update(
            layers=config.layers if config.layers is not None else (None, *p.hidden, None),
            activation=config.activation or p.activation,
            output=config.output or p.output,
            cost=config.cost or _cost_for(config.output, p.cost),
        )
    return dataclasses.replace(config, **fill)


def _cost_for(output, preset_cost):
    """The preset's cost, unless an ``output`` given instead of the preset's needs another.

    ``--data moons --output softmax`` trains with cross-entropy, not the preset's binary
    cross-entropy (made for its sigmoid output); squared error fits every output.
    """
    if output is None:
        return preset_cost
    from jbp.losses import COSTS

    if preset_cost in COSTS and output in COSTS[preset_cost][3]:
        return preset_cost
    made_for = [name for name, spec in COSTS.items() if spec[3] == (output,)]
    return made_for[0] if made_for else "squared_error"


#: keys of :func:`compat_key` that may differ on resume: the target (resuming to a later
#: epoch is the point), and the device layout (it continues, but not bit-identically)
MAY_DIFFER = ("epochs",)
RECORDED = ("devices", "parallel")


def compat_key(config: RunConfig, model) -> dict:
    """What a checkpoint records about its run: ``--resume`` must match all but ``MAY_DIFFER``.

    JSON-friendly. ``model.config()`` describes the architecture (for ``--model mlp`` its
    keys are spread at the top level, as checkpoints always had them). ``devices`` and
    ``parallel`` are recorded: resuming on another device count or mode continues the run,
    with a warning that it is no longer bit-identical to an uninterrupted one (the sums of
    the gradient shares round differently).
    """
    c = resolve(config)
    arch = model.config() if c.is_mlp else {"model": c.model, "network": model.config()}
    return {
        "data": c.data,
        **arch,
        "dtype": c.dtype,
        "batch_size": c.batch_size,
        "seed": c.seed,
        "backward": c.backward,
        "optimizer": c.optimizer,
        "lr": c.lr,
        "hparams": {k: _plain(v) for k, v in c.optimizer_options},
        "schedule": c.schedule,
        "schedule_params": {k: _plain(v) for k, v in c.schedule_options},
        "devices": c.devices or 1,
        "parallel": _layout(c.devices or 1, c.parallel),
    }


def _layout(devices, parallel):
    """The recorded parallel mode: one device runs the plain program in either mode."""
    return parallel if devices > 1 else "none"


def relaid(stored, key):
    """The :data:`RECORDED` keys whose stored values differ from this run's ``key``."""
    if "devices" in stored and "parallel" in stored:
        stored = {**stored, "parallel": _layout(stored["devices"], stored["parallel"])}
    return [k for k in RECORDED if k in stored and stored[k] != key[k]]


def _plain(v):
    return list(v) if isinstance(v, tuple) else v
