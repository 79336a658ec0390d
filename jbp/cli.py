"""The ``jbp`` command line: ``jbp train``, ``jbp gradcheck``, ``jbp bench``.

Exit status: 0 success; 1 a gradient check failed; 2 bad input (one line on standard error,
no traceback, nothing already saved is touched); 3 training diverged.
"""

import argparse
import json
import math
import os
import sys

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


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
    g = p.add_argument_group("output")
    g.add_argument("--out", help="directory for metrics.jsonl, plots and checkpoints")
    g.add_argument("--json", action="store_true", help="last line of stdout: final metrics as JSON")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def build_parser():
    p = _Parser(prog="jbp", description="JAX backprop: train, check gradients, benchmark.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a network", description="Train an MLP.")
    _add_train_args(t)
    g = sub.add_parser("gradcheck", help="check the manual backward against jax.grad and FD")
    g.add_argument("--layers", default="4,5,3")
    g.add_argument("--activation", default="tanh")
    g.add_argument("--output", default="softmax")
    g.add_argument("--cost", default="cross_entropy")
    g.add_argument("--batch", type=_positive_int("--batch"), default=8)
    g.add_argument("--method", default="central", choices=("central", "forward"))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--json", action="store_true")
    return p


# ------------------------------------------------------------------------- train
def resolve_train(args):
    """Turn parsed flags into ``(net, optimizer, data, batch_size, epochs, lr_label)``."""
    import jax.numpy as jnp

    from jbp import data as data_mod
    from jbp import mlp, optim, schedules

    preset = dict(GENERIC)
    preset.update(
        PRESETS["idx" if args.data.startswith("idx:") else args.data]
        if (args.data in PRESETS or args.data.startswith("idx:"))
        else {}
    )
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else preset.get(name)  # noqa: E731
    ds = data_mod.load(args.data)
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
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    if args.dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    net = mlp.MLP(tuple(sizes), activation, output, cost)

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


def _epoch_line(rec, epochs):
    lr = "-" if rec["lr"] is None else f"{rec['lr']:.3e}"
    return (
        f"epoch {rec['epoch']:>4}/{epochs}  train_loss {rec['train_loss']:.4f}  "
        f"test_loss {rec['test_loss']:.4f}  test_accuracy {rec['test_accuracy']:.4f}  "
        f"lr {lr}  {rec['seconds']:.2f}s"
    )


def cmd_train(args):
    import jax

    from jbp import report, train

    net, optimizer, ds, batch_size, epochs, dtype = resolve_train(args)
    out = report.RunDir(args.out) if args.out else None
    if not args.quiet and not args.json:
        print(
            f"jbp train: {args.data} ({ds.x_train.shape[0]} train / {ds.x_test.shape[0]} test), "
            f"sizes {net.sizes}, {args.optimizer or 'adam'}, batch "
            f"{'full' if batch_size is None else batch_size}, {epochs} epochs, {args.backward} backward",
            flush=True,
        )

    def callback(state, rec):
        if out is not None:
            out.append_metrics(rec)
        if not args.quiet:
            print(_epoch_line(rec, epochs), flush=True)
        return False

    try:
        state, history = train.fit(
            net,
            optimizer,
            ds,
            batch_size=batch_size,
            epochs=epochs,
            key=jax.random.key(args.seed),
            backward=args.backward,
            dtype=dtype,
            patience=args.patience,
            callback=callback,
            progress=sys.stderr.isatty(),
        )
    except train.DivergenceError as e:
        print(f"jbp train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if out is not None:
        out.plot()
    final = dict(history[-1]) if history else {}
    final.update(
        epoch=int(state.epoch),
        step=int(state.step),
        seconds=sum(r["seconds"] for r in history),
        params_sha256=train.params_sha256(state.params),
    )
    if history and history[-1].get("early_stopped"):
        final["test_loss"] = float(net.loss(state.params, *_test(ds, dtype)))
        final["test_accuracy"] = float(net.accuracy(state.params, *_test(ds, dtype)))
    if not args.json:
        print(f"test accuracy {final.get('test_accuracy', float('nan')):.4f}")
    else:
        print(json.dumps(final))
    return 0


def _test(ds, dtype):
    import jax.numpy as jnp

    return jnp.asarray(ds.x_test, dtype), jnp.asarray(ds.y_test)


# --------------------------------------------------------------------- gradcheck
def cmd_gradcheck(args):
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from jbp import gradcheck, mlp

    sizes = _int_list("--layers", args.layers)
    act = (
        tuple(a.strip() for a in args.activation.split(","))
        if "," in args.activation
        else args.activation
    )
    net = mlp.MLP(tuple(sizes), act, args.output, args.cost)
    k1, k2, k3 = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init(k1, jnp.float64)
    params = [
        dict(p, b=0.1 * jax.random.normal(k, p["b"].shape, jnp.float64))
        for p, k in zip(params, jax.random.split(k3, len(params)), strict=True)
    ]
    x = jax.random.normal(k2, (args.batch, sizes[0]), jnp.float64)
    if args.output == "identity":
        y = jax.random.normal(k3, (args.batch, sizes[-1]), jnp.float64)
    elif args.output == "sigmoid" and sizes[-1] > 1:
        y = jax.random.bernoulli(k3, 0.5, (args.batch, sizes[-1])).astype(jnp.float64)
    else:
        y = jax.random.randint(k3, (args.batch,), 0, net.n_classes)
    rep = gradcheck.gradcheck(net, params, x, y, method=args.method)
    print(
        f"jbp gradcheck: sizes {net.sizes}, {args.activation}/{args.output}/{args.cost}, batch {args.batch}"
    )
    print(rep.table())
    if args.json:
        d = rep.to_dict()
        d.update(
            sizes=list(net.sizes),
            activation=args.activation,
            output=args.output,
            cost=args.cost,
            batch=args.batch,
        )
        print(json.dumps(d))
    return 0 if rep.ok else 1


COMMANDS = {"train": cmd_train, "gradcheck": cmd_gradcheck}


def main(argv=None):
    """Entry point of the ``jbp`` console script; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(f"error: {e}" if not str(e).startswith("jbp") else f"{e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:  # DataError, bad hyperparameters, shapes: all say what was wrong
        print(f"jbp: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
