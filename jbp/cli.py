"""The ``jbp`` command line: ``jbp train``, ``jbp gradcheck``, ``jbp check``, ``jbp bench``.

Exit status: 0 success; 1 a gradient check failed; 2 bad input (one line on standard error,
no traceback, nothing already saved is touched); 3 training diverged; 130 / 143 stopped by
SIGINT / SIGTERM after a completed epoch, saved to ``--out`` (continue with ``--resume``).
"""

import json
import os
import signal
import sys

from jbp.flags import EXIT_BAD_INPUT, Parser, UsageError, add_train_args, count

EXIT_DIVERGED = 3
EXIT_PEER_LOST = 4  # multi-process: another process died or was stopped


def build_parser():
    p = Parser(prog="jbp", description="JAX backprop: train, check gradients, benchmark.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    t = sub.add_parser(
        "train", help="train a network", description="Train a model (an MLP by default)."
    )
    add_train_args(t)
    g = sub.add_parser("gradcheck", help="check the manual backward against jax.grad and FD")
    g.add_argument("--layers", default="4,5,3")
    g.add_argument("--activation", default="tanh")
    g.add_argument("--output", default="softmax")
    g.add_argument("--cost", default="cross_entropy")
    g.add_argument("--batch", type=count("--batch"), default=8)
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
    c.add_argument("--batch", type=count("--batch"), default=4)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="last line of stdout: the report as JSON")
    b = sub.add_parser("bench", help="throughput side by side with the baselines (jbp.bench)")
    from jbp.bench import add_args as add_bench_args  # no torch or flax: they load lazily

    add_bench_args(b)
    return p


# ------------------------------------------------------------------------- train
def _epoch_line(rec, epochs):
    lr = "-" if rec["lr"] is None else f"{rec['lr']:.3e}"
    return (
        f"epoch {rec['epoch']:>4}/{epochs}  train_loss {rec['train_loss']:.4f}  "
        f"test_loss {rec['test_loss']:.4f}  test_accuracy {rec['test_accuracy']:.4f}  "
        f"lr {lr}  {_seconds(rec['seconds'])}"
    )


def _seconds(s):
    """``0.42s``, or ``3.1ms`` for an epoch faster than a tenth of a second."""
    return f"{s * 1e3:.1f}ms" if s < 0.1 else f"{s:.2f}s"


def cmd_train(args):
    # SIGINT/SIGTERM only set a flag from here to the end: a second one cannot cut the final
    # save, plots or JSON line short.
    with _SignalStop() as stop:
        return _train(args, stop)


def _train(args, stop):
    from jbp import distributed

    # Devices and the multi-process runtime must be set before anything else touches JAX.
    try:
        distributed.setup(args.devices, args.coordinator, args.num_processes, args.process_id)
    except distributed.PeerError as e:
        _exit_peer_lost(e)
    import jax

    from jbp import compile_cache, flags, recipe, run, train

    compile_cache.enable(args.compile_cache)

    r = recipe.build(flags.run_config(args))
    out = run.Run(
        args.out,
        resume=args.resume,
        keep=args.keep,
        checkpoint_every=args.checkpoint_every,
        writer=distributed.is_writer(),
    )
    state0 = out.start(r, jax.random.key(args.seed))
    if not args.quiet and not args.json:
        print(f"jbp train: {_describe(args, r)}", flush=True)

    def callback(state, rec):
        out.after_epoch(state, rec)
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(_epoch_line(rec, r.epochs), file=sys.stdout)  # above any progress bar
            sys.stdout.flush()
        return stop.signum is not None

    try:
        c = r.config
        state, history = train.fit(
            r.model, r.optimizer, r.data, batch_size=r.batch_size, epochs=r.epochs,
            key=jax.random.key(c.seed), state=state0, backward=c.backward, dtype=r.dtype,
            patience=c.patience, callback=callback, progress=sys.stderr.isatty(),
            devices=c.devices, parallel=c.parallel,
        )  # fmt: skip
        out.finish()
    except train.DivergenceError as e:
        print(f"jbp train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except distributed.PeerError as e:
        _exit_peer_lost(e)
    finally:
        out.close()
    out.plot()
    return _report(args, r, state, history, out, stop)


def _exit_peer_lost(e):
    print(f"jbp train: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)  # skip JAX's exit barrier, which would wait for the dead peer


def _report(args, r, state, history, out, stop):
    """The final line (accuracy, or the JSON record), and where a stopped run stands."""
    from jbp import train

    final = dict(history[-1]) if history else {}
    if not history and out.records():
        final = dict(out.records()[-1])  # resumed at or past --epochs: report where it is
    final.update(
        epoch=int(state.epoch),
        step=int(state.step),
        seconds=sum(rec["seconds"] for rec in history),
        params_sha256=train.params_sha256(state.params),
    )
    if history and history[-1].get("early_stopped"):
        loss, acc = r.model.evaluate(state.params, state.model_state, *_test(r.data, r.dtype))
        final["test_loss"], final["test_accuracy"] = float(loss), float(acc)
    interrupted = stop.signum is not None and int(state.epoch) < r.epochs
    if interrupted:
        final["interrupted"] = signal.Signals(stop.signum).name
        _report_stop(args, stop.signum, state, r.epochs, out)
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


def _describe(args, r):
    """``digits (1437 train / 360 test), sizes (64, 30, 10), adam, batch 64, …``."""
    from jbp import options

    c, ds = r.config, r.data
    model = f"sizes {r.model.sizes}" if c.is_mlp else f"model {c.model}"
    n = getattr(r.model, "n_params", None)
    if not c.is_mlp and n:
        model += f" ({n:,} parameters)"
    batch = "full" if r.batch_size is None else r.batch_size
    return (
        f"{c.data} ({ds.x_train.shape[0]} train / {ds.x_test.shape[0]} test), {model}, "
        f"{options.format_spec(c.optimizer, dict(c.optimizer_options))}, batch {batch}, "
        f"{r.epochs} epochs, {c.backward} backward"
    )


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


def _report_stop(args, signum, state, epochs, out):
    """Say where training stopped and the exact command that continues it."""
    name, epoch = signal.Signals(signum).name, int(state.epoch)
    path = out.checkpoint_path(epoch)
    where = f"saved {path}" if path is not None else "nothing saved (no --out)"
    print(f"jbp train: stopped by {name} after epoch {epoch} of {epochs}; {where}", file=sys.stderr)
    if path is not None:
        print(f"jbp train: resume with: {_resume_command(args)}", file=sys.stderr)


def cmd_gradcheck(args):
    from jbp import gradient_check

    return gradient_check.run_cli(args)


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
