"""A training recipe from command-line flags: data set presets, the network, the optimizer.

Shared by ``jbp train`` and ``jbp bench`` (which times the same recipes), so neither imports
the other. ``resolve_train(args)`` turns parsed flags into ``(net, optimizer, data,
batch_size, epochs, dtype)``; a bad value raises :class:`UsageError` (exit status 2).
"""

import argparse
import math


class UsageError(ValueError):
    """A bad command-line value: reported as one line and exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


# Defaults that depend on the data set: an explicit flag always wins.
PRESETS = {
    "digits": dict(hidden="30", activation="sigmoid", batch_size="64", epochs=30, lr=1e-2),
    "moons": dict(
        hidden="5,2",
        activation="relu",
        output="sigmoid",
        cost="binary_cross_entropy",
        batch_size="64",
        epochs=1000,
        lr=7e-3,
    ),
    "fashion-mnist": dict(hidden="256", activation="relu", batch_size="128", epochs=10, lr=1e-3),
    "idx": dict(hidden="256", activation="relu", batch_size="128", epochs=10, lr=1e-3),
}
GENERIC = dict(output="softmax", cost="cross_entropy", optimizer="adam", schedule="constant")
# Defaults of the built-in CNN (jbp.models.cnn) per data set; they replace the MLP's.
CNN_PRESETS = {
    "digits": dict(batch_size="64", epochs=15, lr=3e-3),
    "fashion-mnist": dict(
        batch_size="128",
        epochs=8,
        lr=1e-3,
        schedule="piecewise",
        piecewise=dict(boundaries_epochs=[6], values=[1e-4]),
    ),
    "idx": dict(batch_size="128", epochs=8, lr=1e-3),
}
MLP_ONLY = ("layers", "activation", "output", "cost")


def _positive_float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v) or v <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        return v

    return parse


def _float(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        return v

    return parse


def _positive_int(name):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer, got {text!r}"
            ) from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a positive integer, got {text!r}")
        return v

    return parse


def _int_list(name, text, allow_auto=False):
    out = []
    for part in text.split(","):
        part = part.strip()
        if allow_auto and part in ("", "_", "auto"):
            out.append(None)
            continue
        try:
            v = int(part)
        except ValueError:
            raise UsageError(
                f"{name} must be comma-separated positive integers, got {text!r}"
            ) from None
        if v < 1:
            raise UsageError(f"{name} must be positive integers, got {text!r}")
        out.append(v)
    return out


def _float_list(name, text):
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None


def _add_train_args(p):
    g = p.add_argument_group("data and network")
    g.add_argument("--data", default="digits", help="digits | moons | fashion-mnist | idx:DIR")
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
    g.add_argument("--activation", help="sigmoid | tanh | relu | identity, or one per hidden layer")
    g.add_argument("--output", help="identity | sigmoid | softmax (default softmax)")
    g.add_argument("--cost", help="squared_error | binary_cross_entropy | cross_entropy")
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    g = p.add_argument_group("optimizer and schedule")
    g.add_argument("--optimizer", help="sgd | momentum | rmsprop | adam (default adam)")
    g.add_argument("--lr", type=_positive_float("--lr"), help="learning rate (initial)")
    g.add_argument("--beta", type=_float("--beta"), help="momentum / rmsprop decay β")
    g.add_argument("--beta1", type=_float("--beta1"), help="adam β₁")
    g.add_argument("--beta2", type=_float("--beta2"), help="adam β₂")
    g.add_argument("--eps", type=_float("--eps"), help="rmsprop / adam ε")
    g.add_argument("--bias-correction", action="store_true", help="momentum: v/(1−βᵗ)")
    g.add_argument(
        "--schedule",
        help="constant | inverse-time | exponential | inverse-sqrt | staircase | piecewise",
    )
    g.add_argument("--decay-rate", type=_float("--decay-rate"), help="inverse-time: rate")
    g.add_argument(
        "--time-interval",
        type=_positive_int("--time-interval"),
        help="inverse-time: epochs per decay",
    )
    g.add_argument("--base", type=_float("--base"), help="exponential: lr0·baseᵉᵖᵒᶜʰ")
    g.add_argument("--k", type=_float("--k"), help="inverse-sqrt: lr0·k/√(epoch+1)")
    g.add_argument("--factor", type=_float("--factor"), help="staircase: lr0·factor^⌊epoch/every⌋")
    g.add_argument("--every", type=_positive_int("--every"), help="staircase: epochs per step")
    g.add_argument("--boundaries", help="piecewise: epochs, e.g. 10,20")
    g.add_argument("--values", help="piecewise: the lr after each boundary, e.g. 1e-3,1e-4")
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", help="N, or full for batch gradient descent (1 = SGD)")
    g.add_argument("--epochs", type=_positive_int("--epochs"), help="train up to this epoch")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backward", default="manual", choices=("manual", "autodiff"))
    g.add_argument("--patience", type=_positive_int("--patience"), help="early stopping")
    g = p.add_argument_group("parallel (see jbp.parallel)")
    g.add_argument(
        "--devices",
        type=_positive_int("--devices"),
        help="split every mini-batch over N devices (on CPU: N simulated devices)",
    )
    g.add_argument("--parallel", default="shard_map", choices=("shard_map", "pmap"))
    g.add_argument("--coordinator", help="HOST:PORT of process 0, for multi-process training")
    g.add_argument("--num-processes", type=_positive_int("--num-processes"))
    g.add_argument("--process-id", type=int, help="this process's rank, 0 … N-1")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="directory for metrics.jsonl, plots and checkpoints")
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
        type=_positive_int("--checkpoint-every"),
        default=1,
        metavar="N",
        help="save a checkpoint every N epochs, and always at the end or on SIGINT/SIGTERM",
    )
    g.add_argument(
        "--keep", type=_positive_int("--keep"), default=3, metavar="N", help="checkpoints kept"
    )
    g.add_argument("--json", action="store_true", help="last line of stdout: final metrics as JSON")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def train_parser(prog="jbp train"):
    """A parser with the ``jbp train`` flags (for recipes given as argv)."""
    p = _Parser(prog=prog, description="Train a model.")
    _add_train_args(p)
    return p


def _preset(args):
    """The data set's defaults, and ``pick(name)``: the flag if given, else the default."""
    preset = dict(GENERIC)
    name = "idx" if args.data.startswith("idx:") else args.data
    preset.update(PRESETS.get(name, {}))
    if getattr(args, "model", "mlp") == "cnn":
        preset.update(CNN_PRESETS.get(name, {}))

    def pick(name):
        value = getattr(args, name)
        return value if value is not None else preset.get(name)

    return preset, pick


def resolve_train(args):
    """Turn parsed flags into ``(net, optimizer, data, batch_size, epochs, lr_label)``."""
    import jax.numpy as jnp

    from jbp import data as data_mod
    from jbp import optim, schedules

    preset, pick = _preset(args)
    ds = data_mod.load(args.data)
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    if getattr(args, "model", "mlp") == "mlp":
        net = _mlp(args, ds, preset, pick)
    else:
        net, ds = _model(args, ds)

    bs_text = args.batch_size if args.batch_size is not None else preset.get("batch_size", "64")
    if str(bs_text).lower() == "full":
        batch_size = None
    else:
        try:
            batch_size = int(bs_text)
        except ValueError:
            raise UsageError(
                f"--batch-size must be a positive integer or 'full', got {bs_text!r}"
            ) from None
        if batch_size < 1:
            raise UsageError(f"--batch-size must be a positive integer or 'full', got {bs_text!r}")
    epochs = args.epochs if args.epochs is not None else preset.get("epochs", 10)
    n = ds.x_train.shape[0]
    steps_per_epoch = 1 if batch_size is None else math.ceil(n / min(batch_size, n))

    lr0 = args.lr if args.lr is not None else preset.get("lr", 1e-3)
    sched_name = pick("schedule")
    sparams = {}
    for flag, key in (
        ("decay_rate", "decay_rate"),
        ("time_interval", "time_interval"),
        ("base", "base"),
        ("k", "k"),
        ("factor", "factor"),
        ("every", "every_epochs"),
    ):
        if getattr(args, flag) is not None:
            sparams[key] = getattr(args, flag)
    if sched_name == "piecewise" and args.schedule is None:  # the preset's own steps
        sparams.update(preset.get("piecewise", {}))
    if args.boundaries is not None:
        sparams["boundaries_epochs"] = [
            int(v) for v in _float_list("--boundaries", args.boundaries)
        ]
    if args.values is not None:
        sparams["values"] = _float_list("--values", args.values)
    schedule = schedules.get(sched_name, lr0, steps_per_epoch=steps_per_epoch, **sparams)
    lr = lr0 if sched_name == "constant" else schedule

    opt_name = pick("optimizer")
    hp = {}
    for flag, key in (("beta", "beta"), ("beta1", "b1"), ("beta2", "b2"), ("eps", "eps")):
        if getattr(args, flag) is not None:
            hp[key] = getattr(args, flag)
    if args.bias_correction:
        hp["bias_correction"] = True
    optimizer = optim.get(opt_name, lr, **hp)
    return net, optimizer, ds, batch_size, epochs, dtype


def _mlp(args, ds, preset, pick):
    """``--model mlp``: a ``jbp.MLP`` from --layers, --activation, --output, --cost."""
    from jbp import data as data_mod
    from jbp import mlp

    n_in, n_out = data_mod.n_features(ds), data_mod.n_classes(ds)
    n_in, n_out = data_mod.n_features(ds), data_mod.n_classes(ds)
    output, cost = pick("output"), pick("cost")
    if n_out == 2 and output == "sigmoid":
        n_out = 1
    if args.layers is not None:
        sizes = _int_list("--layers", args.layers, allow_auto=True)
        if len(sizes) < 2:
            raise UsageError(
                f"--layers needs at least an input and an output width, got {args.layers!r}"
            )
    else:
        sizes = [None, *_int_list("--layers", preset["hidden"]), None]
    if sizes[0] is None:
        sizes[0] = n_in
    if sizes[-1] is None:
        sizes[-1] = n_out
    if sizes[0] != n_in:
        raise UsageError(
            f"--layers starts with {sizes[0]} but data {args.data!r} has {n_in} input features"
        )
    if sizes[-1] != n_out and not (sizes[-1] == 1 and n_out == 2):
        raise UsageError(
            f"--layers ends with {sizes[-1]} but data {args.data!r} has {n_out} classes"
        )
    activation = pick("activation")
    if "," in activation:
        activation = tuple(a.strip() for a in activation.split(","))
    return mlp.MLP(tuple(sizes), activation, output, cost)


def _model(args, ds):
    """``--model cnn`` or ``module:function``: a jbp model, and the data shaped for it."""
    import inspect

    from jbp import check, models
    from jbp import data as data_mod

    given = [f"--{f}" for f in MLP_ONLY if getattr(args, f) is not None]
    if given:
        raise UsageError(
            f"{', '.join(given)} shape the MLP; --model {args.model} defines its own layers"
        )
    n_classes = data_mod.n_classes(ds)
    if args.model == "cnn":
        if ds.x_train.ndim == 2 and data_mod.n_features(ds) == 2:
            raise UsageError(f"--model cnn needs images; data {args.data!r} has 2 features")
        shape = _image_shape(ds)
        net = models.cnn(in_shape=shape, n_classes=n_classes)
    else:
        if ":" not in args.model:
            raise UsageError(f"--model must be mlp, cnn or module:function, got {args.model!r}")
        mod, _, attr = args.model.rpartition(":")
        fn = check.load_module_attribute(mod, attr, args.model)
        if not callable(fn) or hasattr(fn, "train_grad"):
            net = fn
        else:
            accepted = inspect.signature(fn).parameters
            kw = {"in_shape": _image_shape(ds), "n_classes": n_classes}
            net = fn(**{k: v for k, v in kw.items() if k in accepted})
        if not callable(getattr(net, "train_grad", None)):
            raise UsageError(
                f"--model {args.model} gave {type(net).__name__}, not a jbp model (jbp.Network, "
                f"jbp.MLP, jbp.adapters.from_function / from_nnx)"
            )
    in_shape = getattr(net, "in_shape", None)
    if in_shape is not None:
        ds = data_mod.as_shape(ds, in_shape)
    return net, ds


def _image_shape(ds):
    """One example's shape as an image: (h, w, c) kept, a square of pixels made (h, h, 1)."""
    import math

    shape = ds.x_train.shape[1:]
    if len(shape) == 3:
        return tuple(shape)
    side = math.isqrt(math.prod(shape))
    if side * side != math.prod(shape):
        return tuple(shape)
    return (side, side, 1)
