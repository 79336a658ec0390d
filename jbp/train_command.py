"""``jbp train`` once its devices are set up (:func:`run`): start or resume, train, report.

:mod:`jbp.cli` parses the flags, sets up devices and processes, builds the recipe and the run
folder (:class:`jbp.run.Run`, locked), then hands over to :func:`run`, which starts or resumes
the run, trains with :func:`jbp.fit` (one line per epoch), saves, plots (best-effort) and
prints the final line — the test accuracy, or with ``--json`` the final record with
``params_sha256``. It returns the exit status: 0; 3 on divergence, after saving the last good
epoch and writing the plots; 130 / 143 when a signal stopped the run (the command that
resumes it is printed). Errors it does not handle (bad input, I/O) go up to
:func:`jbp.cli.main`, which turns each into one line and its exit status.
"""

import json
import os
import signal
import sys

EXIT_DIVERGED = 3


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


def run(args, r, out, stop, key):
    """Start or resume in ``out``, train, save, plot and report; the exit status."""
    from jbp import distributed, train

    state0 = out.start(r, key)
    if not args.quiet and not args.json:
        print(f"jbp train: {_describe(args, r)}", flush=True)

    def callback(state, rec):
        out.after_epoch(state, rec)
        if not args.quiet:
            from tqdm.auto import tqdm

            tqdm.write(_epoch_line(rec, r.epochs), file=sys.stdout)  # above any progress bar
            sys.stdout.flush()
        # every process stops at the same epoch, whichever of them got the signal
        agreed = distributed.agree_stop(stop.signum)
        if agreed is not None and stop.signum is None:
            stop.signum = agreed  # a peer's signal: stop, and exit, as if it were ours
        return agreed is not None

    try:
        c = r.config
        state, history = train.fit(
            r.model, r.optimizer, r.data, batch_size=r.batch_size, epochs=r.epochs,
            key=key, state=state0, backward=c.backward, dtype=r.dtype, patience=c.patience,
            early_stopping=out.early_stopping(c.patience), callback=callback,
            progress=sys.stderr.isatty(), devices=c.devices, parallel=c.parallel,
            divergence_threshold=c.divergence_threshold,
        )  # fmt: skip
        out.finish()
    except train.DivergenceError as e:
        return _diverged(r, out, e)
    out.plot()
    return _report(args, r, state, history, out, stop)


def _diverged(r, out, e):
    """Save the last good epoch and the plots, say where: one line, exit 3."""
    from jbp.util import os_message

    epoch = int(e.state.epoch)
    try:
        path = out.save_last_good(e.state)
        if path is not None:
            where = f"checkpoint {path} holds epoch {epoch}, the last good one"
        elif out.out:
            where = "nothing saved (no epoch completed)"
        else:
            where = "nothing saved (no --out)"
    except OSError as err:
        where = f"the last good epoch {epoch} could not be saved: {os_message(err)}"
    out.plot()
    print(f"jbp train: {e}{_eps_hint(r.config, e)}; {where}", file=sys.stderr, flush=True)
    return EXIT_DIVERGED


def _eps_hint(c, e):
    """adam / rmsprop with eps=0 divide 0 by 0 where a gradient is 0: name it."""
    eps = dict(c.optimizer_options).get("eps")
    if e.kind == "non-finite" and c.optimizer in ("adam", "rmsprop") and eps == 0:
        return (
            f" (or: {c.optimizer} with eps=0 divides 0 by 0 wherever a gradient is 0, e.g. the "
            f"weights of an input that is always 0 — give eps > 0, e.g. eps=1e-8)"
        )
    return ""


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
    early = out.early
    if not history and early is not None and early.done(int(state.epoch)):
        # resumed with a patience its run had already run out of: fit returned the best
        final.update(early_stopped=True, best_epoch=early.best_epoch)
    if final.get("early_stopped"):  # the best epoch's parameters: their own test metrics
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
