"""The ``jbp`` command line: ``jbp train``, ``jbp gradcheck``, ``jbp bench``.

Exit status: 0 success; 1 a gradient check failed; 2 bad input (one line on standard error,
no traceback, nothing already saved is touched); 3 training diverged; 130 / 143 stopped by
SIGINT / SIGTERM after a completed epoch, saved to ``--out`` (continue with ``--resume``).
"""

import argparse
import json
import math
import os
import signal
import sys

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4  # multi-process: another process died or was stopped


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
    b = sub.add_parser("bench", help="throughput side by side with the baselines (jbp.bench)")
    b.add_argument("--quick", action="store_true", help="small data, one repeat: under a minute")
    b.add_argument("--workloads", default="a,b,c", help="a,b,c (see jbp.bench.WORKLOADS)")
    b.add_argument("--contenders", help="comma-separated subset (default: all importable)")
    b.add_argument("--examples", type=_positive_int("--examples"), help="training examples")
    b.add_argument("--repeats", type=_positive_int("--repeats"), help="timed epochs (best kept)")
    b.add_argument("--out", help="directory for bench.json and bench.png")
    b.add_argument("--bf16", action="store_true", help="bfloat16 parameters, data and matmuls")
    b.add_argument("--time-to-accuracy", action="store_true", help="also time Fashion-MNIST runs")
    b.add_argument("--json", action="store_true", help="last line of stdout: the result as JSON")
    return p


# ------------------------------------------------------------------------- train
def _preset(args):
    """The data set's defaults, and ``pick(name)``: the flag if given, else the default."""
    preset = dict(GENERIC)
    preset.update(PRESETS.get("idx" if args.data.startswith("idx:") else args.data, {}))

    def pick(name):
        value = getattr(args, name)
        return value if value is not None else preset.get(name)

    return preset, pick


def resolve_train(args):
    """Turn parsed flags into ``(net, optimizer, data, batch_size, epochs, lr_label)``."""
    import jax.numpy as jnp

    from jbp import data as data_mod
    from jbp import mlp, optim, schedules

    preset, pick = _preset(args)
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
    # SIGINT/SIGTERM only set a flag from here to the end: a second one cannot cut the final
    # save, plots or JSON line short.
    with _SignalStop() as stop:
        return _train(args, stop)


def _train(args, stop):
    from jbp import parallel

    # Devices and the multi-process runtime must be set before anything else touches JAX.
    try:
        parallel.setup(args.devices, args.coordinator, args.num_processes, args.process_id)
    except parallel.PeerError as e:
        print(f"jbp train: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_PEER_LOST)  # the half-started runtime would wait for its peers at exit
    import jax

    from jbp import report, train

    net, optimizer, ds, batch_size, epochs, dtype = resolve_train(args)
    out = report.RunDir(args.out) if args.out and parallel.is_writer() else None
    ckpts, config, state0 = _start_state(args, out, net, optimizer, batch_size, dtype)
    if not args.quiet and not args.json:
        print(
            f"jbp train: {args.data} ({ds.x_train.shape[0]} train / {ds.x_test.shape[0]} test), "
            f"sizes {net.sizes}, {args.optimizer or 'adam'}, batch "
            f"{'full' if batch_size is None else batch_size}, {epochs} epochs, {args.backward} backward",
            flush=True,
        )

    last = {"state": None, "saved": None if state0 is None else int(state0.epoch)}

    def callback(state, rec):
        last["state"] = state  # the true end-of-epoch state (early stopping swaps params later)
        if out is not None:
            out.append_metrics(rec)  # before the checkpoint: a resume truncates, never misses
            if ckpts is not None and rec["epoch"] % args.checkpoint_every == 0:
                ckpts.save(state, config=config)
                last["saved"] = rec["epoch"]
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(_epoch_line(rec, epochs), file=sys.stdout)  # above any progress bar
            sys.stdout.flush()
        return stop.signum is not None

    try:
        state, history = train.fit(
            net,
            optimizer,
            ds,
            batch_size=batch_size,
            epochs=epochs,
            key=jax.random.key(args.seed),
            state=state0,
            backward=args.backward,
            dtype=dtype,
            patience=args.patience,
            callback=callback,
            progress=sys.stderr.isatty(),
            devices=args.devices,
            parallel=args.parallel,
        )
        if out is not None and ckpts is not None and last["state"] is not None:
            if int(last["state"].epoch) != last["saved"]:  # the end, or a stop between saves
                ckpts.save(last["state"], config=config)
    except train.DivergenceError as e:
        print(f"jbp train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except parallel.PeerError as e:
        print(f"jbp train: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_PEER_LOST)  # skip JAX's exit barrier, which would wait for the dead peer
    finally:
        if ckpts is not None:
            ckpts.close()
    if out is not None:
        out.plot()
    final = dict(history[-1]) if history else {}
    if not history and out is not None and out.read_metrics():
        final = dict(out.read_metrics()[-1])  # resumed at or past --epochs: report where it is
    final.update(
        epoch=int(state.epoch),
        step=int(state.step),
        seconds=sum(r["seconds"] for r in history),
        params_sha256=train.params_sha256(state.params),
    )
    if history and history[-1].get("early_stopped"):
        final["test_loss"] = float(net.loss(state.params, *_test(ds, dtype)))
        final["test_accuracy"] = float(net.accuracy(state.params, *_test(ds, dtype)))
    interrupted = stop.signum is not None and int(state.epoch) < epochs
    if interrupted:
        final["interrupted"] = signal.Signals(stop.signum).name
        _report_stop(args, stop.signum, state, epochs, ckpts if out is not None else None)
    if not args.json:
        print(f"test accuracy {final.get('test_accuracy', float('nan')):.4f}")
    else:
        print(json.dumps(final))
    return 128 + stop.signum if interrupted else 0


def _test(ds, dtype):
    import jax.numpy as jnp

    return jnp.asarray(ds.x_test, dtype), jnp.asarray(ds.y_test)


# ------------------------------------------------------- checkpoints, resume, signals
def _run_config(args, net, batch_size):
    """What a checkpoint records about its run; ``--resume`` must match all but ``epochs``."""
    preset, pick = _preset(args)
    hparams = ("beta", "beta1", "beta2", "eps", "bias_correction")
    sched = ("decay_rate", "time_interval", "base", "k", "factor", "every", "boundaries", "values")
    return {
        "data": args.data,
        "sizes": list(net.sizes),
        "activation": net.activation if isinstance(net.activation, str) else list(net.activation),
        "output": net.output,
        "cost": net.cost,
        "dtype": args.dtype,
        "batch_size": "full" if batch_size is None else batch_size,
        "seed": args.seed,
        "backward": args.backward,
        "optimizer": pick("optimizer"),
        "lr": pick("lr"),
        "hparams": {h: getattr(args, h) for h in hparams if getattr(args, h) not in (None, False)},
        "schedule": pick("schedule"),
        "schedule_params": {h: getattr(args, h) for h in sched if getattr(args, h) is not None},
    }  # not --epochs: resuming to a later target is the point


def _start_state(args, out, net, optimizer, batch_size, dtype):
    """``(checkpoints, config, state)``: where to save, and a restored state or None (fresh).

    Without ``--resume`` a folder that already holds checkpoints is refused (they would be
    mixed with a new run's). With it, the latest readable checkpoint is restored (see
    :mod:`jbp.checkpoint` for the policy) and ``metrics.jsonl`` is cut back to its epoch.
    """
    import jax

    from jbp import checkpoint, train

    if args.resume and not args.out:
        raise UsageError("--resume needs --out DIR: the run folder to continue")
    if not args.out:
        return None, None, None
    ckpts = checkpoint.CheckpointDir(args.out, keep=args.keep)
    config = _run_config(args, net, batch_size)
    if not args.resume:
        if ckpts.steps():
            raise UsageError(
                f"--out {args.out} already holds checkpoints (epoch {ckpts.steps()[-1]}): add "
                f"--resume to continue that run, or choose another --out"
            )
        if out is not None:
            out.write_metrics([])  # a fresh run starts a fresh log
        return ckpts, config, None
    like = train.init_state(net, optimizer, jax.random.key(args.seed), dtype)
    found = ckpts.restore_latest(like, config=config, set_aside=out is not None)
    if found is None:
        print(f"jbp train: no checkpoint in {ckpts.directory}: starting anew", file=sys.stderr)
        if out is not None:
            out.write_metrics([])
        return ckpts, config, None
    for step, reason, moved in found.skipped:
        print(f"jbp train: skipped checkpoint {step}: {reason}; moved to {moved}", file=sys.stderr)
    if out is not None:
        out.write_metrics([r for r in out.read_metrics() if r.get("epoch", 0) <= found.step])
    print(
        f"jbp train: resuming from {ckpts.path(found.step)} (epoch {found.step}"
        f"{', the latest readable checkpoint' if found.skipped else ''})",
        file=sys.stderr,
    )
    return ckpts, config, found.state


class _SignalStop:
    """SIGINT / SIGTERM ask training to stop after the current epoch (then save, exit 130/143).

    The handler only sets a flag, checked by ``fit``'s callback between epochs: a signal can
    never interrupt an epoch's update or a checkpoint being written. A second signal is
    acknowledged and changes nothing.
    """

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            msg = f"\njbp train: {name}: stopping after the current epoch, then saving\n"
        else:
            msg = f"jbp train: {name}: already stopping after the current epoch\n"
        os.write(2, msg.encode())  # not print(): a handler may run in the middle of a print

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        if self.signum is not None:
            return  # stopping: keep only acknowledging signals until the process has exited
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _resume_command(args):
    import shlex
    import shutil

    argv = [a for a in args.argv if a != "--resume"] + ["--resume"]
    script = os.environ.get("JBP_TRAIN_SCRIPT")  # set by scripts/train: resume the same way
    if script and argv and argv[0] == "train":
        return f"{shlex.quote(script)} {shlex.join(argv[1:])}"
    prog = sys.argv[0] if sys.argv else ""
    if os.path.basename(prog) == "__main__.py":  # python -m jbp
        prog = f"{shlex.quote(sys.executable)} -m jbp"
    elif os.path.basename(prog) == "jbp" and not _same_file(shutil.which("jbp"), prog):
        prog = shlex.quote(prog)  # not the jbp on PATH (e.g. .venv/bin/jbp): spell it out
    else:
        prog = "jbp"
    return f"{prog} {shlex.join(argv)}"


def _same_file(a, b):
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _report_stop(args, signum, state, epochs, ckpts):
    """Say where training stopped and the exact command that continues it."""
    name, epoch = signal.Signals(signum).name, int(state.epoch)
    where = f"saved {ckpts.path(epoch)}" if ckpts is not None else "nothing saved (no --out)"
    print(f"jbp train: stopped by {name} after epoch {epoch} of {epochs}; {where}", file=sys.stderr)
    if ckpts is not None:
        print(f"jbp train: resume with: {_resume_command(args)}", file=sys.stderr)


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


def cmd_bench(args):
    from jbp import bench

    return bench.main(args)


COMMANDS = {"train": cmd_train, "gradcheck": cmd_gradcheck, "bench": cmd_bench}


def _one_line(message):
    """Bad input is reported on one line: fold a multi-line message."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def main(argv=None):
    """Entry point of the ``jbp`` console script; returns the exit status."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)  # to print the resume command
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(_one_line(e if str(e).startswith("jbp") else f"error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:  # DataError, bad hyperparameters, shapes: all say what was wrong
        print(_one_line(f"jbp: error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
