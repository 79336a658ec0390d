"""The ``jbp`` command line: ``jbp train``, ``jbp gradcheck``, ``jbp check``, ``jbp bench``.

Exit status: 0 success; 1 a gradient check failed; 2 bad input (one line on standard error,
no traceback, nothing already saved is touched); 3 training diverged; 130 / 143 stopped by
SIGINT / SIGTERM after a completed epoch, saved to ``--out`` (continue with ``--resume``).
"""

import json
import os
import signal
import sys

from jbp.recipe import (  # noqa: F401 - the recipe flags are part of the command line
    GENERIC,
    PRESETS,
    UsageError,
    _add_train_args,
    _int_list,
    _Parser,
    _positive_int,
    _preset,
    resolve_train,
)

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4  # multi-process: another process died or was stopped


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
    c = sub.add_parser(
        "check",
        help="check a layer's or model's hand-written backward (jbp.check_layer / check_model)",
        description="Check the backward of a layer or model named as module:attribute "
        "(or path/to/file.py:attribute; a zero-argument factory is called) against jax.vjp "
        "and finite differences, leaf by leaf, in float64. Exit status 1 if a check fails.",
    )
    c.add_argument("target", help="module:attribute or path/to/file.py:attribute")
    c.add_argument(
        "--in-shape", help="one example's input shape, e.g. 28,28,1 (needed for a layer)"
    )
    c.add_argument("--batch", type=_positive_int("--batch"), default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="last line of stdout: the report as JSON")
    b = sub.add_parser("bench", help="throughput side by side with the baselines (jbp.bench)")
    b.add_argument("--quick", action="store_true", help="small data, one repeat: under a minute")
    b.add_argument("--workloads", default="a,b,c,cnn", help="a,b,c,cnn (see jbp.bench.WORKLOADS)")
    b.add_argument("--contenders", help="comma-separated subset (default: all importable)")
    b.add_argument("--examples", type=_positive_int("--examples"), help="training examples")
    b.add_argument("--repeats", type=_positive_int("--repeats"), help="timed epochs (best kept)")
    b.add_argument("--out", help="directory for bench.json and bench.png")
    b.add_argument("--bf16", action="store_true", help="bfloat16 parameters, data and matmuls")
    b.add_argument("--time-to-accuracy", action="store_true", help="also time Fashion-MNIST runs")
    b.add_argument("--json", action="store_true", help="last line of stdout: the result as JSON")
    return p


# ------------------------------------------------------------------------- train
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
            f"{_describe_model(args, net)}, {args.optimizer or 'adam'}, batch "
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
        loss, acc = net.evaluate(state.params, state.model_state, *_test(ds, dtype))
        final["test_loss"], final["test_accuracy"] = float(loss), float(acc)
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
    import numpy as np

    x = ds.x_test if not np.issubdtype(ds.x_test.dtype, np.floating) else ds.x_test.astype(dtype)
    return jnp.asarray(x), jnp.asarray(ds.y_test)


def _describe_model(args, net):
    if args.model == "mlp":
        return f"sizes {net.sizes}"
    n = getattr(net, "n_params", None)
    return f"model {args.model}" + (f" ({n:,} parameters)" if n else "")


# ------------------------------------------------------- checkpoints, resume, signals
def _run_config(args, net, batch_size):
    """What a checkpoint records about its run; ``--resume`` must match all but ``epochs``."""
    preset, pick = _preset(args)
    hparams = ("beta", "beta1", "beta2", "eps", "bias_correction")
    sched = ("decay_rate", "time_interval", "base", "k", "factor", "every", "boundaries", "values")
    if args.model == "mlp":  # the keys of checkpoints written before --model existed
        model = net.config()
    else:
        model = {"model": args.model, "network": net.config()}
    return {
        "data": args.data,
        **model,
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


def cmd_check(args):
    from jbp import check

    return check.run_cli(args.target, args.in_shape, args.batch, args.seed, args.json)


def cmd_bench(args):
    from jbp import bench

    return bench.main(args)


COMMANDS = {
    "train": cmd_train,
    "gradcheck": cmd_gradcheck,
    "check": cmd_check,
    "bench": cmd_bench,
}


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
