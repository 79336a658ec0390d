"""``jbp train``'s flags, and the :class:`jbp.config.RunConfig` they describe.

Each flag's choices and help come from the registry it names (``jbp.optim.NAMES``,
``jbp.schedules.NAMES``, ``jbp.data.NAMES`` …), so a new optimizer or schedule appears here by
itself. An optimizer or schedule takes its options in one spec (see :mod:`jbp.options`)::

    --optimizer adam:b1=0.9,b2=0.99        --schedule staircase:factor=0.5,every_epochs=10

checked against the function's own parameters: an unknown key exits 2 naming the accepted
ones. The older one-option flags (``--beta1``, ``--factor``, ``--every`` …) still work for
this release, as aliases that add to the spec.

Every numeric flag is range-checked as it is parsed, and the message names the accepted range
(``--seed must be an integer in 0 … 4294967295 …``); the types are in :mod:`jbp.flag_types`.
"""

import argparse
import dataclasses
import os

from jbp import config, options
from jbp.flag_types import (  # noqa: F401 - re-exported: the flags' types and errors
    EXIT_BAD_INPUT,
    Parser,
    UsageError,
    count,
    divergence_threshold,
    index,
    int_list,
    number,
    seed,
)
from jbp.util import INT32_MAX

#: the one-option flags of earlier releases: flag dest -> (optimizer|schedule, option key)
ALIASES = {
    "beta": ("optimizer", "beta"),
    "beta1": ("optimizer", "b1"),
    "beta2": ("optimizer", "b2"),
    "eps": ("optimizer", "eps"),
    "bias_correction": ("optimizer", "bias_correction"),
    "decay_rate": ("schedule", "decay_rate"),
    "time_interval": ("schedule", "time_interval"),
    "base": ("schedule", "base"),
    "k": ("schedule", "k"),
    "factor": ("schedule", "factor"),
    "every": ("schedule", "every_epochs"),
    "boundaries": ("schedule", "boundaries_epochs"),
    "values": ("schedule", "values"),
}


def add_train_args(p):
    """The ``jbp train`` flags, grouped as ``jbp train --help`` shows them."""
    from jbp import data, epoch, parallel
    from jbp.activations import ACTIVATIONS, OUTPUTS
    from jbp.losses import COSTS

    g = p.add_argument_group("data and model")
    g.add_argument("--data", default="digits", help=" | ".join(data.NAMES))
    g.add_argument(
        "--model",
        default="mlp",
        help="mlp (default: --layers, --activation …) | cnn (conv32-pool-conv64-pool-dense128-"
        "dense10, see jbp.models.cnn) | module:function or path/to/file.py:function returning "
        "a jbp model (called with in_shape= and n_classes= if it takes them)",
    )
    g.add_argument(
        "--layers",
        help="all layer widths, e.g. 64,30,10; the first/last may be _ to infer them from the "
        "data (default: per data set, e.g. _,30,_ for digits, _,256,_ for fashion-mnist)",
    )
    g.add_argument(
        "--activation", help=" | ".join(ACTIVATIONS) + ", or one per hidden layer: relu,tanh"
    )
    g.add_argument("--output", help=" | ".join(OUTPUTS) + " (default softmax)")
    g.add_argument("--cost", help=" | ".join(COSTS))
    g.add_argument("--dtype", default="float32", choices=config.DTYPES)
    _add_optimizer_args(p.add_argument_group("optimizer and schedule: NAME or NAME:key=value,…"))
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", help="N, or full for batch gradient descent (1 = SGD)")
    g.add_argument("--epochs", type=count("--epochs"), help="train up to this epoch")
    g.add_argument("--seed", type=seed(), default=0, help="0 … 2**32-1")
    g.add_argument("--backward", default="manual", choices=epoch.BACKWARDS)
    g.add_argument("--patience", type=count("--patience"), help="early stopping")
    g.add_argument(
        "--divergence-threshold",
        type=divergence_threshold,
        metavar="X|off",
        help="stop (exit 3) when an epoch's train loss exceeds X × the initial loss "
        f"(default {config.RunConfig.divergence_threshold:g}); off: only non-finite values stop",
    )
    add_compile_cache_arg(g)
    g = p.add_argument_group("parallel (see jbp.parallel)")
    g.add_argument(
        "--devices",
        type=count("--devices"),
        help="split every mini-batch over N devices (on CPU: N simulated devices)",
    )
    g.add_argument("--parallel", default="shard_map", choices=parallel.MODES)
    g.add_argument("--coordinator", help="HOST:PORT of process 0, for multi-process training")
    g.add_argument("--num-processes", type=count("--num-processes"))
    g.add_argument(
        "--process-id",
        type=index("--process-id", 0, INT32_MAX),
        help="this process's rank, 0 … N-1",
    )
    _add_output_args(p.add_argument_group("output"))


def _add_optimizer_args(g):
    from jbp import optim, schedules

    g.add_argument(
        "--optimizer",
        help=" | ".join(_with_keys(n, optim.hyperparameters(n)) for n in optim.NAMES)
        + " (default adam), e.g. adam:b1=0.9,b2=0.99",
    )
    g.add_argument("--lr", type=number("--lr", positive=True), help="learning rate (initial)")
    g.add_argument(
        "--schedule",
        help=" | ".join(_with_keys(n, schedules.options(n)) for n in schedules.NAMES)
        + " (default constant), e.g. staircase:factor=0.5,every_epochs=10",
    )
    for dest in ALIASES:  # one release more, then gone
        flag = _alias_flag(dest)
        if dest == "bias_correction":
            g.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
        else:
            g.add_argument(flag, help=argparse.SUPPRESS)


def add_compile_cache_arg(g):
    """``--compile-cache DIR|off`` (see :mod:`jbp.compile_cache`)."""
    g.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="keep compiled programs in DIR for the next run (default: $JBP_COMPILATION_CACHE, "
        "else the per-user cache folder, e.g. ~/.cache/jbp/jax); off: compile afresh",
    )


def _with_keys(name, keys):
    return f"{name}:{','.join(keys)}" if keys else name


def _add_output_args(g):
    g.add_argument(
        "--out", type=os.path.expanduser, help="directory for metrics.jsonl, plots and checkpoints"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest complete checkpoint in --out (bit-identical to a run "
        "never stopped; --epochs may be raised). Newer checkpoints that cannot be read are "
        "reported and moved to --out/checkpoints-unreadable/ (never deleted); if none can "
        "be read, or the checkpoint is from another architecture, optimizer or dtype, exit 2",
    )
    g.add_argument(
        "--checkpoint-every",
        type=count("--checkpoint-every"),
        default=1,
        metavar="N",
        help="save a checkpoint every N epochs, and always at the end or on SIGINT/SIGTERM",
    )
    g.add_argument("--keep", type=count("--keep"), default=3, metavar="N", help="checkpoints kept")
    g.add_argument("--json", action="store_true", help="last line of stdout: final metrics as JSON")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def train_parser(prog="jbp train"):
    """A parser with the ``jbp train`` flags (for recipes given as argv)."""
    p = Parser(prog=prog, description="Train a model.")
    add_train_args(p)
    return p


def run_config(args) -> config.RunConfig:
    """The :class:`~jbp.config.RunConfig` that parsed ``jbp train`` flags describe."""
    for name in ("optimizer", "schedule", "activation", "output", "cost", "model", "data"):
        value = getattr(args, name, None)
        if value is not None and not str(value).strip():  # "$UNSET": not the default
            raise UsageError(f"--{name} needs a value, got {value!r}")
    opt, opt_opts = _spec(args, "optimizer")
    sched, sched_opts = _spec(args, "schedule")
    activation = args.activation
    if activation is not None and "," in activation:
        activation = tuple(a.strip() for a in activation.split(","))
    layers = None
    if args.layers is not None:
        layers = tuple(int_list("--layers", args.layers, allow_auto=True))
        if len(layers) < 2:
            raise UsageError(
                f"--layers needs at least an input and an output width, got {args.layers!r}"
            )
    return config.RunConfig(
        data=args.data,
        model=args.model,
        layers=layers,
        activation=activation,
        output=args.output,
        cost=args.cost,
        dtype=args.dtype,
        optimizer=opt,
        optimizer_options=opt_opts,
        lr=args.lr,
        schedule=sched,
        schedule_options=sched_opts,
        batch_size=_batch_size(args.batch_size),
        epochs=args.epochs,
        seed=args.seed,
        backward=args.backward,
        patience=args.patience,
        divergence_threshold=_threshold(args.divergence_threshold),
        devices=args.devices,
        parallel=args.parallel,
    )


def _threshold(value):
    """The flag's value in the config: not given → the default, ``"off"`` → ``None``."""
    if value is None:
        return config.RunConfig.divergence_threshold
    return None if value == "off" else value


def _spec(args, kind):
    """``--optimizer`` / ``--schedule``: the name and its options, aliases folded in."""
    from jbp import optim, schedules

    text = getattr(args, kind)
    name, opts = options.parse_spec(text, f"--{kind}") if text else (None, {})
    aliases = {  # option key -> (the old flag as typed, its value)
        key: (_alias_flag(dest), getattr(args, dest))
        for dest, (k, key) in ALIASES.items()
        if k == kind and getattr(args, dest) not in (None, False)
    }
    if kind == "optimizer":
        lookup_name = name or config.preset(config.RunConfig(data=args.data)).optimizer
        keys = optim.hyperparameters(lookup_name)
    else:
        lookup_name = name or "constant"
        if aliases and name is None:
            flags = ", ".join(flag for flag, _ in aliases.values())
            raise UsageError(f"{flags} need{'s' if len(aliases) == 1 else ''} --schedule NAME")
        keys = schedules.options(lookup_name)
    opts = options.expand_keys(kind, lookup_name, opts, keys)
    for key, (flag, raw) in aliases.items():
        if key in opts:
            raise UsageError(f"{key} is given twice: in --{kind} {text!r} and as {flag}")
        opts[key] = raw if isinstance(raw, bool) else options.parse_value(flag, raw)
    opts = options.expand_keys(kind, lookup_name, opts, keys)  # an alias the name doesn't take
    registry = optim.BUILDERS if kind == "optimizer" else schedules.BUILDERS
    if opts and name is None:
        name = lookup_name
    if name is not None:  # as the registry spells it: ADAM, inverse_time -> adam, inverse-time
        name = options.lookup(kind, name, registry)[0]
    listed = options.defaults(options.lookup(kind, lookup_name, registry)[1])
    return name, tuple((k, _as_listed(v, listed.get(k))) for k, v in opts.items())


def _alias_flag(dest):
    return "--" + dest.replace("_", "-")


def _as_listed(v, default):
    """A list as a tuple; one number where the default is a sequence, as a 1-tuple."""
    if isinstance(v, list):
        return tuple(v)
    return (v,) if isinstance(default, (tuple, list)) else v


def _batch_size(text):
    if text is None:
        return None
    if str(text).lower() == "full":
        return "full"
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 1 <= v <= INT32_MAX:
        raise UsageError(
            f"--batch-size must be a positive integer or 'full', got {text!r} (accepted: 1 … "
            f"{INT32_MAX}, or full)"
        )
    return v


def to_argv(c: config.RunConfig) -> list:
    """The ``jbp train`` flags that describe ``c`` (the fields it sets; the inverse of
    :func:`run_config` up to defaults)."""
    default = config.RunConfig()
    argv = []
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        if f.name == "divergence_threshold" and v is None and v != default.divergence_threshold:
            argv += ["--divergence-threshold", "off"]
            continue
        if f.name in ("optimizer", "schedule") and v is None and getattr(c, f.name + "_options"):
            v = getattr(config.resolve(c), f.name)  # options of the preset's optimizer
        if f.name.endswith("_options") or v == getattr(default, f.name) or v is None:
            continue
        if f.name in ("optimizer", "schedule"):
            v = options.format_spec(v, dict(getattr(c, f.name + "_options")))
        elif f.name in ("layers", "activation") and isinstance(v, tuple):
            v = ",".join("_" if x is None else str(x) for x in v)
        argv += ["--" + f.name.replace("_", "-"), str(v)]
    return argv
