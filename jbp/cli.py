"""The ``jbp`` command line: ``jbp train``, ``jbp gradcheck``, ``jbp check``, ``jbp bench``.

Exit status (every failure is one line on standard error, never a traceback):

* 0 success; 1 a gradient check failed;
* 2 bad input, found before any work: a bad flag or out-of-range value, missing or bad data
  (NaN in it included), a corrupt or mismatched checkpoint, a model too large for memory, an
  ``--out`` that cannot be used (a file, under a file, not writable: ``jbp train: <path>:
  <reason>``) or is in use by another live run (its PID named); nothing already saved is
  touched. Also an out-of-memory error from XLA that the up-front estimate (a floor) let by;
* 3 training diverged (non-finite, or the loss above ``--divergence-threshold`` × its initial
  value): the last good epoch is saved to ``--out`` and the plots written;
* 4 a lost peer in a multi-process run;
* 74 (``EX_IOERR``) an I/O failure during the work — a checkpoint, ``metrics.jsonl`` or bench
  output that cannot be written (disk full …): ``jbp <command>: <path>: <reason>``, and which
  checkpoint is the latest saved (continue with ``--resume`` once fixed). A plot that cannot
  be written is a warning only: the result and ``--json`` line still come, exit 0;
* 130 / 143 stopped by SIGINT / SIGTERM after a completed epoch, saved to ``--out``
  (continue with ``--resume``).
"""

import contextlib
import dataclasses
import os
import signal
import sys

from jbp.flags import EXIT_BAD_INPUT, Parser, UsageError, add_train_args, count, seed
from jbp.train_command import EXIT_DIVERGED  # noqa: F401 - the statuses, all named here

EXIT_PEER_LOST = 4  # multi-process: another process died or was stopped
EXIT_IO = 74  # sysexits.h EX_IOERR: a file could not be written during the work


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
    g.add_argument(
        "--coordinates",
        type=count("--coordinates"),
        metavar="N",
        help="finite differences on N random coordinates only (a big network: the report "
        "says it is a subset); default: every parameter",
    )
    g.add_argument("--seed", type=seed(), default=0)
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
    c.add_argument("--seed", type=seed(), default=0)
    c.add_argument("--json", action="store_true", help="last line of stdout: the report as JSON")
    b = sub.add_parser("bench", help="throughput side by side with the baselines (jbp.bench)")
    from jbp.bench import add_args as add_bench_args  # no torch or flax: they load lazily

    add_bench_args(b)
    return p


# ------------------------------------------------------------------------- train
def cmd_train(args):
    # SIGINT/SIGTERM only set a flag from here to the end: a second one cannot cut the final
    # save, plots or JSON line short.
    with _SignalStop() as stop:
        return _train(args, stop)


def _train(args, stop):
    from jbp import distributed, flags, recipe, rundir

    # Everything that can be checked is checked first, by every process, before the processes
    # connect: bad input then ends each process at once (exit 2), never a peer left waiting.
    cfg = flags.run_config(args)
    if args.out:
        rundir.check_usable(args.out)
    data = recipe.load_data(cfg)
    # Devices and the multi-process runtime must be set before anything else touches JAX.
    try:
        with _default_signals():  # waiting for peers in C++: a flag would never be looked at
            distributed.setup(args.devices, args.coordinator, args.num_processes, args.process_id)
    except distributed.PeerError as e:
        _exit_peer_lost(e)
    distributed.agree_config(
        {**dataclasses.asdict(cfg), "resume": args.resume, "out_given": bool(args.out)}
    )
    import jax

    from jbp import compile_cache, run, train_command

    compile_cache.enable(args.compile_cache)

    r = recipe.build(cfg, data=data)
    out = run.Run(
        args.out,
        resume=args.resume,
        keep=args.keep,
        checkpoint_every=args.checkpoint_every,
        writer=distributed.is_writer(),
    )  # holds the folder's lock until out.close()
    try:
        return train_command.run(args, r, out, stop, jax.random.key(args.seed))
    except distributed.PeerError as e:
        _exit_peer_lost(e)
    finally:
        out.close()


def _exit_peer_lost(e):
    print(f"jbp train: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_PEER_LOST)  # skip JAX's exit barrier, which would wait for the dead peer


@contextlib.contextmanager
def _default_signals():
    """SIGINT and SIGTERM end the process at once (nothing is trained or saved yet)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def cmd_gradcheck(args):
    from jbp import gradient_check

    return gradient_check.run_cli(args)


def cmd_check(args):
    from jbp import check

    _check_input_size(args.in_shape, args.batch)
    return check.run_cli(args.target, args.in_shape, args.batch, args.seed, args.json)


def _check_input_size(in_shape, batch):
    """``--in-shape`` × ``--batch`` in float64, with the copies a check makes (inputs,
    cotangents, gradients, finite-difference steps): refused up front if it cannot fit."""
    import math

    from jbp import memory
    from jbp.check_targets import parse_shape

    shape = parse_shape(in_shape)
    if shape is None:
        return
    shapes = shape if shape and isinstance(shape[0], tuple) else (shape,)
    values = batch * sum(math.prod(s) for s in shapes)
    memory.check_bytes(8 * 8 * values, f"--in-shape {in_shape} with --batch {batch}: the "
                       f"inputs and their gradients", advice="use a smaller --in-shape or --batch")  # fmt: skip


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


def _one_line_warnings(prog):
    """jbp's own warnings (e.g. labels that skip classes) as ``jbp train: warning: …``."""
    import warnings

    from jbp.data_checks import DataWarning

    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(_one_line(f"{prog}: warning: {message}"), file=sys.stderr, flush=True)
        else:
            previous(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    return previous


def main(argv=None):
    """Entry point of the ``jbp`` console script; returns the exit status."""
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = f"jbp {argv[0]}" if argv and argv[0] in COMMANDS else "jbp"
    previous = _one_line_warnings(prog)
    try:
        return _leave(_run_command(argv, prog))
    finally:
        warnings.showwarning = previous


def _leave(code):
    """In a multi-process run, an error ends this process at once (see distributed.leave)."""
    distributed = sys.modules.get("jbp.distributed")
    if distributed is None or code in (0, 130, 143):  # success, or every process stopping
        return code  # together: the runtime's exit barrier is met by all of them
    return distributed.leave(code)


def _run_command(argv, prog):
    """Parse and run; every error a user can cause becomes one line and its exit status."""
    from jbp.util import PathError, os_message

    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # to print the resume command
        return COMMANDS[args.command](args)
    except UsageError as e:
        print(_one_line(e if str(e).startswith("jbp") else f"jbp: error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except PathError as e:  # --out a file, not writable, in use: before any work
        print(_one_line(f"{prog}: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:  # DataError, bad hyperparameters, shapes: all say what was wrong
        print(_one_line(f"jbp: error: {e}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a checkpoint, metrics or bench output that cannot be written
        print(_one_line(f"{prog}: {os_message(e)}"), file=sys.stderr)
        return EXIT_IO
    except RuntimeError as e:  # XLA out of memory past the up-front estimate (a floor)
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(_one_line(f"{prog}: out of memory: {str(e).splitlines()[0][:300]}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("jbp: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
