"""``jbp bench`` on the command line: its flags (:func:`add_args`) and its entry (:func:`main`).

``jbp bench`` times every contender on the chosen workloads (:func:`jbp.bench.run`), prints
the table (or, with ``--json``, the result as one JSON line last), optionally writes
``bench.json`` and ``bench.png`` to ``--out``, and with ``--time-to-accuracy`` also trains
the Fashion-MNIST recipes of :mod:`jbp.bench.tta`. ``--quick`` (small data, one repeat) runs
in under a minute. Neither function imports PyTorch or Flax: a contender imports its own
library when it is built.
"""

import json
import os
import sys

import jbp.bench.report as report
import jbp.bench.runner as runner
import jbp.bench.runs as runs
import jbp.bench.tta as tta
from jbp import compile_cache, memory
from jbp.flags import add_compile_cache_arg, count

_TTA_BASELINES = ("jax-scan", "torch")  # the contenders that report a test accuracy


def add_args(p):
    """Add the ``jbp bench`` flags to the argparse parser ``p``."""
    p.add_argument("--quick", action="store_true", help="small data, one repeat: under a minute")
    p.add_argument(
        "--workloads",
        default=",".join(runner.WORKLOADS),
        help=f"{','.join(runner.WORKLOADS)} (see jbp.bench.WORKLOADS)",
    )
    p.add_argument(
        "--contenders",
        help=f"comma-separated subset of {','.join(runner.ALL_CONTENDERS)} "
        "(default: all importable)",
    )
    p.add_argument("--examples", type=count("--examples"), help="training examples")
    p.add_argument("--repeats", type=count("--repeats"), help="timed epochs (best kept)")
    p.add_argument("--out", type=os.path.expanduser, help="directory for bench.json and bench.png")
    p.add_argument("--bf16", action="store_true", help="bfloat16 parameters, data and matmuls")
    p.add_argument("--time-to-accuracy", action="store_true", help="also time Fashion-MNIST runs")
    p.add_argument(
        "--startup",
        action="store_true",
        help="also time whole jbp train runs, cold and warm compilation cache",
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="also the parallel table: plain, --devices 1/2 (shard_map, pmap), 2 processes",
    )
    p.add_argument("--json", action="store_true", help="last line of stdout: the result as JSON")
    add_compile_cache_arg(p)
    return p


def _names(text, valid, what):
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(
            f"--{what} must be a comma-separated subset of {','.join(valid)}, got {text!r}"
        )
    return names


def _log(quiet):
    return (lambda *a: None) if quiet else (lambda m: print(m, flush=True))


def main(args):
    """``jbp bench`` with parsed flags ``args``: run, print, save; the exit status (0).

    A bad ``--workloads`` or ``--contenders`` raises ``ValueError`` naming the flag, and an
    ``--out`` that cannot hold the results (a file, not writable) :class:`jbp.util.PathError`,
    both before anything is timed. If ``bench.json`` cannot be written at the end, the result
    is printed first and the ``OSError`` raised; a chart that cannot be written is a warning.
    """
    workloads = _names(args.workloads, tuple(runner.WORKLOADS), "workloads")
    if args.out:
        report.check_out(args.out)  # before the benchmark: not after minutes of timing
    if args.examples:  # 784 float32 inputs each, tiled from Fashion-MNIST (a copy, then a cut)
        memory.check_bytes(2 * 784 * 4 * args.examples, f"--examples {args.examples}: the data",
                           advice="ask for fewer --examples")  # fmt: skip
    compile_cache.enable(args.compile_cache)
    contenders = (
        runner.ALL_CONTENDERS
        if args.contenders is None
        else _names(args.contenders, runner.ALL_CONTENDERS, "contenders")
    )
    quick = args.quick
    res = runner.run(
        workloads,
        contenders,
        n_examples=args.examples or (4096 if quick else 60000),
        cnn_examples=1280 if quick else 6400,
        repeats=args.repeats or (1 if quick else 3),
        budget_s=0.25 if quick else 3.0,
        bf16=args.bf16,
        peak_n=1024 if quick else 2048,
        log=_log(args.json),
    )
    if args.time_to_accuracy:
        res["time_to_accuracy"] = tta.time_to_accuracy(
            [c for c in contenders if c in _TTA_BASELINES], log=_log(args.json)
        )
    if args.startup:
        res["startup"] = runs.startup(log=_log(args.json))
    if args.parallel:
        res["parallel"] = runs.parallel_table(log=_log(args.json))
    failed = None
    if args.out:
        try:
            paths = report.save(res, args.out, on_error=_warn)
        except OSError as e:
            failed = e  # the result is printed all the same, then the error
        else:
            if not args.json:
                print(f"wrote {' and '.join(str(p) for p in paths if p is not None)}")
    print(json.dumps(res) if args.json else "\n" + report.table(res))
    if failed is not None:
        raise failed
    return 0


def _warn(message):
    print(f"jbp bench: warning: {message} (the chart is not written)", file=sys.stderr, flush=True)
