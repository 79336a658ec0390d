"""Whole ``jbp train`` runs, timed from outside: start-up cold and warm, and the parallel table.

**Start-up** (:func:`startup`). A user iterating on a script pays the process start, the
imports, the data loading and the compilation on every run. Each recipe is run twice as a
fresh ``jbp train`` process with its own, initially empty, compilation cache: *cold* (every
program compiled) and *warm* (every program read back from the cache, see
:mod:`jbp.compile_cache`). Reported: the whole run's wall seconds, the first epoch's seconds
(compilation included), the seconds of the remaining epochs, the test accuracy, and the
cache hits of the warm run.

**Parallel** (:func:`parallel_table`). The same recipe on the plain engine, with ``--devices
1`` and ``--devices 2`` (shard_map and pmap; simulated CPU devices), and as two processes on
loopback (``scripts/launch 2``, gloo collectives). Reported: examples per second (the
training set over the median epoch, first epoch excluded) and, for two processes, the extra
seconds per step over one process with two devices — the collective's cost.
"""

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jbp.config import RunConfig

ROOT = Path(__file__).resolve().parents[2]
DIGITS = RunConfig(data="digits", epochs=5)


def _train(argv, out, cache, env=None, launch=None, write_out=True):
    """Run ``jbp train`` (or ``scripts/launch N -- …``); ``(wall s, metrics records, final)``.

    ``write_out=False``: no ``--out`` (no checkpoints, metrics file or plots, as a user's plain
    run); the records then come from the epoch lines the run prints.
    """
    from jbp import flags

    args = [*flags.to_argv(argv), "--json", "--compile-cache", cache]
    args += ["--quiet", "--out", str(out)] if write_out else []
    if launch:
        cmd = [str(ROOT / "scripts" / "launch"), str(launch), "--", *args]
    else:
        cmd = [sys.executable, "-m", "jbp", "train", *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited {r.returncode}: {r.stderr[-300:]}")
    if write_out:
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    else:
        records = _epoch_lines(r.stdout)
    final = json.loads(r.stdout.strip().splitlines()[-1])
    return wall, records, final


_EPOCH_LINE = re.compile(r"^epoch\s+(\d+)/\d+\s.*\s([\d.]+)(ms|s)$")


def _epoch_lines(stdout):
    """``[{"epoch", "seconds"}]`` from the lines ``jbp train`` prints per epoch."""
    records = []
    for line in stdout.splitlines():
        m = _EPOCH_LINE.match(line.strip())
        if m:
            scale = 1e-3 if m.group(3) == "ms" else 1.0
            records.append({"epoch": int(m.group(1)), "seconds": float(m.group(2)) * scale})
    return records


def startup(recipes=None, log=print):
    """Cold and warm runs of each ``(label, RunConfig, write_out)``; a list of result dicts.

    ``write_out``: with ``--out`` (checkpoints, metrics, plots: about 1.7 s of the
    Fashion-MNIST recipe's run) or without, as the README's recipe runs.
    """
    import jbp.bench.tta as tta

    recipes = recipes or [
        ("digits, --out", DIGITS, True),
        ("fashion-mnist 89 % recipe", tta.TTA_RECIPE, False),
    ]
    rows = []
    for label, cfg, write_out in recipes:
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "cache")
            for state in ("cold", "warm"):
                wall, recs, final = _train(cfg, Path(tmp) / state, cache, write_out=write_out)
                row = {
                    "recipe": label,
                    "cache": state,
                    "wall_s": wall,
                    "first_epoch_s": recs[0]["seconds"],
                    "other_epochs_s": sum(r["seconds"] for r in recs[1:]),
                    "test_accuracy": final["test_accuracy"],
                }
                rows.append(row)
                log(
                    f"  {label} {state}: {wall:.2f} s wall, first epoch "
                    f"{row['first_epoch_s']:.2f} s, accuracy {row['test_accuracy']:.4f}"
                )
    return rows


SETUPS = (
    ("plain engine", [], None),
    ("--devices 1 shard_map", ["--devices", "1"], None),
    ("--devices 1 pmap", ["--devices", "1", "--parallel", "pmap"], None),
    ("--devices 2 shard_map", ["--devices", "2"], None),
    ("--devices 2 pmap", ["--devices", "2", "--parallel", "pmap"], None),
    ("2 processes (gloo)", [], 2),
)


def parallel_table(cfg=DIGITS, log=print):
    """Examples per second of ``cfg`` in every :data:`SETUPS`; a list of result dicts."""
    from jbp import flags, recipe

    r = recipe.build(cfg)
    n = r.data.x_train.shape[0]
    steps = -(-n // (r.batch_size or n))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, extra, procs) in enumerate(SETUPS):
            argv_cfg = flags.run_config(flags.train_parser().parse_args(flags.to_argv(cfg) + extra))
            try:
                _, recs, _ = _train(argv_cfg, Path(tmp) / str(i), str(Path(tmp) / "cache"),
                                    launch=procs)  # fmt: skip
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                rows.append({"setup": label, "error": str(e)[:200]})
                log(f"  {label}: failed")
                continue
            epoch_s = statistics.median(x["seconds"] for x in recs[1:] or recs)
            rows.append({"setup": label, "examples_per_s": n / epoch_s, "epoch_s": epoch_s})
            log(f"  {label}: {n / epoch_s:,.0f} examples/s")
    by = {x["setup"]: x for x in rows if "error" not in x}
    if "2 processes (gloo)" in by and "--devices 2 shard_map" in by:
        extra = by["2 processes (gloo)"]["epoch_s"] - by["--devices 2 shard_map"]["epoch_s"]
        by["2 processes (gloo)"]["collective_s_per_step"] = extra / steps
    return rows


def table(res):
    """The two tables as text lines."""
    lines = []
    if res.get("startup"):
        lines += ["", "start-up: whole jbp train runs, fresh process, empty then warm cache"]
        head = f"{'recipe':<28}{'cache':>6}{'wall s':>8}{'1st epoch s':>13}{'rest s':>8}{'acc':>8}"
        lines += [head, "-" * len(head)]
        for r in res["startup"]:
            lines.append(
                f"{r['recipe']:<28}{r['cache']:>6}{r['wall_s']:>8.2f}{r['first_epoch_s']:>13.2f}"
                f"{r['other_epochs_s']:>8.2f}{r['test_accuracy']:>8.4f}"
            )
    if res.get("parallel"):
        lines += ["", "parallel: examples/s (median epoch, first excluded)"]
        for r in res["parallel"]:
            if "error" in r:
                lines.append(f"{r['setup']:<24}  failed: {r['error'][:60]}")
                continue
            coll = r.get("collective_s_per_step")
            note = f"   collective ≈ {coll * 1e3:.1f} ms/step" if coll is not None else ""
            lines.append(f"{r['setup']:<24}{r['examples_per_s']:>12,.0f}{note}")
    return lines
