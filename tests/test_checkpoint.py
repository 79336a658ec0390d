"""Checkpoints and exact resume: orbax saves, split ≡ uninterrupted, signals, kills, bad files.

Three kinds of test:

* library (in process): ``jbp.checkpoint.save/restore`` round trips, refusals, and train 3 →
  save → restore → train to 6 ≡ train 6, bit for bit, for every optimizer with a schedule and a
  ragged last batch;
* command line (in process, ``jbp.cli.main``): resume, metrics continuation, mismatched and
  corrupt checkpoints (exit 2, one message, files untouched), the fallback policy;
* real processes: SIGINT and SIGTERM sent to a running ``jbp train`` (exit 130 / 143, then
  the printed resume command), and SIGKILL while a checkpoint is being written (the write is
  paused at a barrier by patching orbax's commit step in the child: no timing luck).
"""

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jbp
from jbp import checkpoint, cli, compat, optim, schedules, train
from jbp.data import load

ROOT = Path(__file__).resolve().parents[1]
DIGITS = load("digits")  # 1347 training examples: batch 100 leaves a ragged last batch of 47


def _tree_digest(root):
    """SHA-256 over every path and file's bytes below ``root``: 'nothing was touched'."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _run_cli(capsys, *argv):
    rc = cli.main(["train", "--quiet", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def _epochs(run_dir):
    return [json.loads(line)["epoch"] for line in (Path(run_dir) / "metrics.jsonl").open()]


# --------------------------------------------------------------------------- library
OPTIMIZERS = {
    "sgd": lambda lr: optim.sgd(lr),
    "momentum": lambda lr: optim.momentum(lr, beta=0.9),
    "rmsprop": lambda lr: optim.rmsprop(lr, beta=0.9),
    "adam": lambda lr: optim.adam(lr),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_split_resume_is_bitwise_identical(tmp_path, name):
    """train 3 → save → restore → train to 6 ≡ train 6 (every leaf of the state, bit for bit)."""
    net = jbp.MLP((64, 16, 10), "tanh", "softmax", "cross_entropy")
    bs = 100  # 1347 = 13·100 + 47: a ragged, masked last batch
    steps_per_epoch = -(-DIGITS.x_train.shape[0] // bs)
    lr = schedules.exponential(0.05 if name != "sgd" else 0.5, 0.8, steps_per_epoch=steps_per_epoch)
    opt = OPTIMIZERS[name](lr)
    epoch_fn = jax.jit(train.make_epoch(net, opt, bs))  # one compile shared by the three runs
    kw = dict(batch_size=bs, epoch_fn=epoch_fn)
    key = jax.random.key(7)

    whole, _ = train.fit(net, opt, DIGITS, epochs=6, key=key, **kw)
    first, _ = train.fit(net, opt, DIGITS, epochs=3, key=key, **kw)
    path = checkpoint.save(tmp_path / "ck", first, config={"optimizer": name})
    like = train.init_state(net, opt, jax.random.key(123))  # other values, same structure
    restored = checkpoint.restore(path, like=like, config={"optimizer": name})
    assert checkpoint.state_sha256(restored) == checkpoint.state_sha256(first)
    assert type(restored) is train.TrainState and type(restored.opt_state) is type(like.opt_state)
    resumed, hist = train.fit(net, opt, DIGITS, epochs=6, state=restored, **kw)

    assert [r["epoch"] for r in hist] == [4, 5, 6]
    assert int(resumed.epoch) == 6 and int(resumed.step) == 6 * steps_per_epoch
    assert train.params_sha256(resumed.params) == train.params_sha256(whole.params)
    assert checkpoint.state_sha256(resumed) == checkpoint.state_sha256(whole)
    # and the test can fail: one epoch fewer is another set of parameters
    assert train.params_sha256(first.params) != train.params_sha256(whole.params)


def _small_state(opt=None, sizes=(4, 3, 2), dtype=jnp.float32):
    net = jbp.MLP(sizes)
    return train.init_state(net, opt or optim.adam(1e-2), jax.random.key(0), dtype)


def test_save_refuses_to_overwrite_and_restore_names_missing(tmp_path):
    st = _small_state()
    checkpoint.save(tmp_path / "a", st)
    before = _tree_digest(tmp_path)
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save(tmp_path / "a", st)
    assert _tree_digest(tmp_path) == before
    with pytest.raises(checkpoint.CheckpointCorrupt, match="no checkpoint at"):
        checkpoint.restore(tmp_path / "nope", like=st)


@pytest.mark.parametrize(
    "other, message",
    [
        (
            lambda: _small_state(sizes=(4, 5, 2)),
            r"layer 1 W has shape \(4, 3\), this run expects "
            r"\(4, 5\): another architecture",
        ),
        (lambda: _small_state(sizes=(4, 3, 3, 2)), "2 layers, this run expects 3"),
        (lambda: _small_state(optim.rmsprop(1e-2)), "optimizer state differs .*another optimizer"),
        (lambda: _small_state(dtype=jnp.float64), "float32, this run expects float64: another"),
    ],
)
def test_restore_refuses_a_state_of_another_shape(tmp_path, other, message):
    """orbax would restore into other shapes/dtypes; jbp compares leaf by leaf and refuses."""
    path = checkpoint.save(tmp_path / "a", _small_state())
    with pytest.raises(checkpoint.CheckpointMismatch, match=message):
        checkpoint.restore(path, like=other())


def test_restore_refuses_another_config(tmp_path):
    st = _small_state()
    path = checkpoint.save(tmp_path / "a", st, config={"lr": 0.1, "epochs": 3})
    assert checkpoint.restore(path, like=st, config={"lr": 0.1, "epochs": 9}) is not None
    with pytest.raises(checkpoint.CheckpointMismatch, match="lr: checkpoint 0.1, this run 0.2"):
        checkpoint.restore(path, like=st, config={"lr": 0.2, "epochs": 3})


def test_recorded_hash_catches_silent_corruption(tmp_path):
    st = _small_state()
    path = checkpoint.save(tmp_path / "a", st)
    meta_file = path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["state_sha256"] = "0" * 64  # as if the arrays had changed under an intact manifest
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointCorrupt, match="hash"):
        checkpoint.restore(path, like=st)
    assert path.is_dir()


def test_partial_save_is_ignored_and_keep_rotates(tmp_path):
    d = checkpoint.CheckpointDir(tmp_path, keep=2)
    st = _small_state()
    for e in (1, 2, 3):
        d.save(st._replace(epoch=jnp.asarray(e, jnp.int32)))
    assert d.steps() == [2, 3]
    # what a killed save leaves behind: orbax's temporary directory, never renamed
    partial = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"\0" * 10)
    assert d.steps() == [2, 3]
    found = d.restore_latest(st)
    assert found.step == 3 and found.skipped == [] and int(found.state.epoch) == 3
    d.close()


def test_checkpoint_dir_refuses_a_link_out_of_the_run_folder(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the run folder"):
        checkpoint.CheckpointDir(run)


# ---------------------------------------------------------------- command line, in process
FLAGS = ["--layers", "_,16,_", "--optimizer", "momentum", "--schedule", "inverse-time"]
FLAGS += ["--decay-rate", "0.5", "--batch-size", "100", "--lr", "0.05"]


def test_cli_resume_to_a_later_target_and_metrics_continue(tmp_path, capsys):
    out = tmp_path / "run"
    rc, o, _ = _run_cli(
        capsys, *FLAGS, "--epochs", "3", "--out", str(out), "--json", "--checkpoint-every", "2"
    )
    assert rc == 0 and _last_json(o)["epoch"] == 3
    assert checkpoint.CheckpointDir(out).steps() == [2, 3]  # every 2, and always the last
    rc, o, err = _run_cli(
        capsys,
        *FLAGS,
        "--epochs",
        "6",
        "--out",
        str(out),
        "--json",
        "--resume",
        "--checkpoint-every",
        "2",
    )
    assert rc == 0, err
    resumed = _last_json(o)
    rc, o, _ = _run_cli(capsys, *FLAGS, "--epochs", "6", "--json")
    whole = _last_json(o)
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert resumed["epoch"] == 6 and resumed["step"] == whole["step"]
    assert _epochs(out) == [1, 2, 3, 4, 5, 6]
    assert checkpoint.CheckpointDir(out).steps() == [3, 4, 6]  # --keep 3
    # resuming at the target trains nothing and reports where the run is
    rc, o, _ = _run_cli(capsys, *FLAGS, "--epochs", "6", "--out", str(out), "--json", "--resume")
    assert rc == 0 and _last_json(o)["params_sha256"] == whole["params_sha256"]
    assert _epochs(out) == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder after 2 epochs (checkpoints 1 and 2), made once and copied per test."""
    out = tmp_path_factory.mktemp("saved") / "run"
    assert cli.main(["train", "--quiet", *FLAGS, "--epochs", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(saved_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(saved_run, dst, symlinks=True)
    return dst


def _assert_refused(rc, err, run_dir, before, *patterns):
    assert rc == cli.EXIT_BAD_INPUT
    assert "Traceback" not in err and "absl" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for p in patterns:
        assert p in err, err
    assert _tree_digest(run_dir) == before, "a refused resume must leave every file in place"


@pytest.mark.parametrize(
    "change, patterns",
    [
        (["--layers", "_,20,_"], ["sizes: checkpoint [64, 16, 10]", "another architecture"]),
        (["--optimizer", "adam"], ["optimizer: checkpoint momentum", "another optimizer"]),
        (["--dtype", "float64"], ["dtype: checkpoint float32", "another --dtype"]),
        (["--lr", "0.1"], ["lr: checkpoint 0.05, this run 0.1"]),
    ],
)
def test_cli_refuses_a_checkpoint_of_another_run(run_copy, capsys, change, patterns):
    before = _tree_digest(run_copy)
    flags = list(FLAGS)
    i = flags.index(change[0]) if change[0] in flags else None
    if i is not None:
        flags[i + 1] = change[1]
    else:
        flags += change
    rc, _, err = _run_cli(capsys, *flags, "--epochs", "4", "--out", str(run_copy), "--resume")
    _assert_refused(rc, err, run_copy, before, "does not fit this run", *patterns)


def _data_file(step_dir):
    """The largest array file of a checkpoint (it holds the parameters)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


CORRUPTIONS = {
    "truncated arrays": lambda d: _data_file(d).write_bytes(_data_file(d).read_bytes()[:50]),
    "garbage manifest": lambda d: (d / "state" / "manifest.ocdbt").write_bytes(os.urandom(120)),
    "garbage metadata": lambda d: (d / "state" / "_METADATA").write_bytes(b"\xff{not json"),
    "empty meta": lambda d: (d / "meta" / "metadata").write_text(""),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_cli_reports_corrupt_checkpoints_and_keeps_them(run_copy, capsys, kind):
    for step in (1, 2):
        CORRUPTIONS[kind](run_copy / "checkpoints" / str(step))
    before = _tree_digest(run_copy)
    rc, _, err = _run_cli(capsys, *FLAGS, "--epochs", "4", "--out", str(run_copy), "--resume")
    _assert_refused(rc, err, run_copy, before, "can be read (left in place)", "checkpoints/2")


def test_cli_falls_back_to_the_latest_readable_checkpoint(run_copy, capsys):
    CORRUPTIONS["truncated arrays"](run_copy / "checkpoints" / "2")
    rc, o, err = _run_cli(
        capsys, *FLAGS, "--epochs", "3", "--out", str(run_copy), "--resume", "--json"
    )
    assert rc == 0, err
    assert "skipped checkpoint 2" in err and "the latest readable checkpoint" in err
    assert "Traceback" not in err
    moved = run_copy / "checkpoints-unreadable" / "2"
    assert moved.is_dir() and (moved / "state").is_dir()  # set aside, not deleted
    assert checkpoint.CheckpointDir(run_copy).steps() == [1, 2, 3]
    assert _epochs(run_copy) == [1, 2, 3]
    rc, o_ref, _ = _run_cli(capsys, *FLAGS, "--epochs", "3", "--json")
    assert _last_json(o)["params_sha256"] == _last_json(o_ref)["params_sha256"]


def test_cli_guards_existing_runs_and_paths(run_copy, capsys, tmp_path):
    before = _tree_digest(run_copy)
    rc, _, err = _run_cli(capsys, *FLAGS, "--epochs", "4", "--out", str(run_copy))
    _assert_refused(rc, err, run_copy, before, "already holds checkpoints", "--resume")
    rc, _, err = _run_cli(capsys, "--epochs", "4", "--resume")
    assert rc == cli.EXIT_BAD_INPUT and "--resume needs --out" in err
    run = tmp_path / "linked"
    run.mkdir()
    (run / "checkpoints").symlink_to(tmp_path)
    rc, _, err = _run_cli(capsys, "--epochs", "1", "--out", str(run))
    assert rc == cli.EXIT_BAD_INPUT and "outside the run folder" in err


# ------------------------------------------------------------------- real processes
BASE = ["train", "--quiet", "--json", "--batch-size", "100", "--schedule", "exponential"]
BASE += ["--base", "0.97", "--optimizer", "adam"]

# Run in a child before jbp's main: park the commit (rename) of checkpoint 3 at a barrier.
PAUSE_AT_COMMIT = """
import asyncio, sys
from pathlib import Path
from orbax.checkpoint._src.path import atomicity
barrier = Path(sys.argv.pop(1))
commit = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
    if Path(str(self._final_path)).name == "3":  # the step directory, all items written
        barrier.write_text(str(self._tmp_path))
        while True:
            await asyncio.sleep(1)  # until SIGKILL
    return await commit(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from jbp.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _spawn(argv, cwd, script=None):
    cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "-m", "jbp", *argv]
    return subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(predicate, proc, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}: {proc.communicate()}")
        time.sleep(0.05)


def _metrics_lines(run_dir):
    p = run_dir / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """SIGINT, SIGTERM and SIGKILL-during-save runs, their resumes, and one reference run.

    The interrupted runs ask for a million epochs, so they cannot finish before the signal;
    each is resumed to the same target K, which is compared with a run never stopped.
    """
    base = tmp_path_factory.mktemp("signals")
    runs = {name: base / name for name in ("SIGINT", "SIGTERM", "SIGKILL")}
    barrier = base / "barrier"
    procs = {
        name: _spawn([*BASE, "--epochs", "1000000", "--out", str(runs[name])], base)
        for name in ("SIGINT", "SIGTERM")
    }
    procs["SIGKILL"] = _spawn(
        [str(barrier), *BASE, "--epochs", "1000000", "--out", str(runs["SIGKILL"])],
        base,
        script=PAUSE_AT_COMMIT,
    )
    result = {}
    for name in ("SIGINT", "SIGTERM"):
        p = procs[name]
        _wait_for(lambda r=runs[name]: _metrics_lines(r) >= 2, p, "two epochs")
        p.send_signal(getattr(signal, name))
        if name == "SIGINT":  # an impatient second Ctrl-C: must change nothing
            time.sleep(0.2)
            p.send_signal(signal.SIGINT)
    for name in ("SIGINT", "SIGTERM"):
        out, err = procs[name].communicate(timeout=240)
        result[name] = dict(rc=procs[name].returncode, out=out, err=err)
    _wait_for(barrier.exists, procs["SIGKILL"], "the paused save of checkpoint 3")
    result["SIGKILL"] = dict(
        steps_before=checkpoint.CheckpointDir(runs["SIGKILL"]).steps(),
        partial=Path(barrier.read_text()),
        metrics_before=_epochs(runs["SIGKILL"]),
    )
    procs["SIGKILL"].send_signal(signal.SIGKILL)
    procs["SIGKILL"].communicate(timeout=60)
    result["SIGKILL"]["rc"] = procs["SIGKILL"].returncode

    stopped = [_last_json(result[n]["out"])["epoch"] for n in ("SIGINT", "SIGTERM")]
    target = str(max(stopped + [3]) + 2)
    resumes = {}
    for name in ("SIGINT", "SIGTERM"):
        line = next(
            ln
            for ln in result[name]["err"].splitlines()
            if ln.startswith("jbp train: resume with:")
        )
        argv = shlex.split(line.split("resume with:", 1)[1])
        argv = argv[argv.index("train") :]  # after the program (python -m jbp / jbp)
        argv[argv.index("--epochs") + 1] = target  # the printed command, to a reachable target
        resumes[name] = _spawn(argv, base)
    resumes["SIGKILL"] = _spawn(
        [*BASE, "--epochs", target, "--out", str(runs["SIGKILL"]), "--resume"], base
    )
    reference = _spawn([*BASE, "--epochs", target], base)
    for name, p in resumes.items():
        out, err = p.communicate(timeout=300)
        result[name].update(resume_rc=p.returncode, resume_out=out, resume_err=err)
    out, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    result["reference"] = _last_json(out)
    result["target"] = int(target)
    result["runs"] = runs
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_stops_saves_and_resumes_bit_identically(interrupted, name, code):
    r, run = interrupted[name], interrupted["runs"][name]
    assert r["rc"] == code, r["err"]
    stopped = _last_json(r["out"])
    assert stopped["interrupted"] == name
    assert f"stopped by {name} after epoch {stopped['epoch']} of 1000000" in r["err"]
    assert "Traceback" not in r["err"] and "absl" not in r["err"]
    assert r["resume_rc"] == 0, r["resume_err"]
    resumed = _last_json(r["resume_out"])
    assert resumed["epoch"] == interrupted["target"]
    assert resumed["params_sha256"] == interrupted["reference"]["params_sha256"]
    assert _epochs(run) == list(range(1, interrupted["target"] + 1))


@pytest.mark.slow
def test_sigkill_during_a_save_leaves_the_previous_checkpoint(interrupted):
    r, run = interrupted["SIGKILL"], interrupted["runs"]["SIGKILL"]
    assert r["rc"] == -signal.SIGKILL
    assert r["steps_before"] == [1, 2]  # checkpoint 3 was being written, not committed
    assert r["partial"].name == "3.orbax-checkpoint-tmp" and r["partial"].parent.name == (
        "checkpoints"
    )
    assert r["metrics_before"] == [1, 2, 3]  # the log is one epoch ahead of the checkpoints
    assert r["resume_rc"] == 0, r["resume_err"]
    assert f"resuming from {run.resolve() / 'checkpoints' / '2'} (epoch 2)" in r["resume_err"]
    resumed = _last_json(r["resume_out"])
    assert resumed["params_sha256"] == interrupted["reference"]["params_sha256"]
    assert _epochs(run) == list(range(1, interrupted["target"] + 1))  # epoch 3 not twice


@pytest.mark.parametrize(
    "version, message",
    [
        (2, r"format version 2, written by a newer jbp; this jbp reads version 1 and older"),
        (0, r"format version 0, older than any this jbp reads"),
        (None, r"has no valid format version \(None\)"),
    ],
)
def test_restore_checks_the_format_version(tmp_path, version, message):
    st = _small_state()
    path = checkpoint.save(tmp_path / "ck", st)
    meta_file = path / checkpoint.META / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["version"] == checkpoint.VERSION
    meta["version"] = version
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointVersion, match=message):
        checkpoint.restore(path, like=st)


# ------------------------------------------------------- early stopping's best-so-far
def test_the_best_so_far_is_saved_beside_the_state_and_read_back_exactly(tmp_path):
    from jbp.stopping import Best

    st = _small_state()
    best = Best(0.25, 3, jax.tree.map(lambda a: a + 1, st.params), st.model_state)
    path = checkpoint.save(tmp_path / "a", st, best=best)
    meta = checkpoint.read_meta(path)
    assert meta["version"] == checkpoint.VERSION == 1  # an optional item: still version 1
    assert meta["best"]["loss"] == 0.25 and meta["best"]["epoch"] == 3
    back = checkpoint.restore_best(path, like=st)
    assert (back.loss, back.epoch) == (0.25, 3)
    assert train.params_sha256(back.params) == train.params_sha256(best.params)
    assert checkpoint.state_sha256(checkpoint.restore(path, like=st)) == checkpoint.state_sha256(st)
    # a checkpoint without one (no --patience, or an older jbp) has none
    assert checkpoint.restore_best(checkpoint.save(tmp_path / "b", st), like=st) is None
    # and a garbled one is refused, never used
    meta["best"]["sha256"] = "0" * 64
    (path / "meta" / "metadata").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointCorrupt, match="best/ does not hash as saved"):
        checkpoint.restore_best(path, like=st)


PATIENCE = ["--layers", "_,16,_", "--activation", "tanh", "--optimizer", "sgd", "--lr", "1"]
PATIENCE += ["--batch-size", "8", "--epochs", "40", "--patience", "2", "--json"]


def test_cli_patience_run_interrupted_and_resumed_stops_like_one_never_stopped(
    tmp_path, capsys, monkeypatch
):
    """SIGINT between the best epoch and the stop: the resumed run must remember the best."""
    from jbp import run

    rc, o, _ = _run_cli(capsys, *PATIENCE, "--compile-cache", "off")
    whole = _last_json(o)
    assert rc == 0 and whole["early_stopped"] and whole["epoch"] == whole["best_epoch"] + 2
    at = whole["epoch"] - 1  # after the best, before the stop
    after_epoch = run.Run.after_epoch

    def interrupted(self, state, record):
        after_epoch(self, state, record)
        if record["epoch"] == at:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, between two epochs

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(run.Run, "after_epoch", interrupted)
    out = tmp_path / "run"
    try:
        rc, o, err = _run_cli(capsys, *PATIENCE, "--out", str(out))
    finally:
        for s, h in handlers.items():  # a stopped jbp train keeps acknowledging signals
            signal.signal(s, h)
    assert rc == 130 and _last_json(o)["epoch"] == at, err
    monkeypatch.undo()
    rc, o, err = _run_cli(capsys, *PATIENCE, "--out", str(out), "--resume")
    resumed = _last_json(o)
    assert rc == 0, err
    assert (resumed["epoch"], resumed["best_epoch"]) == (whole["epoch"], whole["best_epoch"])
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert _epochs(out) == list(range(1, whole["epoch"] + 1))
    # resumed once more: it had stopped, so nothing is trained and the result is the same
    rc, o, _ = _run_cli(capsys, *PATIENCE, "--out", str(out), "--resume")
    assert rc == 0 and _last_json(o)["params_sha256"] == whole["params_sha256"]
    assert _epochs(out) == list(range(1, whole["epoch"] + 1))


def test_two_spellings_of_one_run_resume_and_a_real_difference_is_refused(tmp_path, capsys):
    """``ADAM`` is ``adam``, ``b1=0.9`` is adam's default, ``base=1`` is ``base=1.0``."""
    out = str(tmp_path / "run")
    base = ["--data", "digits", "--epochs", "1", "--out", out, "--compile-cache", "off"]
    rc, _, err = _run_cli(capsys, *base, "--schedule", "exponential:base=1")
    assert rc == 0, err
    for n, spelling in enumerate(
        (
            ["--optimizer", "ADAM", "--schedule", "EXPONENTIAL:base=1.0"],
            ["--optimizer", "adam:b1=0.9,b2=0.999", "--schedule", "exponential:base=1"],
        ),
        start=2,
    ):
        rc, o, err = _run_cli(capsys, *base, "--resume", *spelling, "--epochs", str(n), "--json")
        assert rc == 0 and _last_json(o)["epoch"] == n, err
    rc, _, err = _run_cli(
        capsys, *base, "--resume", "--optimizer", "adam:b1=0.5", "--schedule", "exponential:base=1"
    )
    assert (
        rc == 2 and 'hparams: checkpoint {"b1": 0.9, "b2": 0.999}, this run {"b1": 0.5}' in err
    ), err
    assert compat.canonical({"optimizer": "RMSprop", "hparams": {"beta": 0.9, "eps": 1}}) == {
        "optimizer": "rmsprop",
        "hparams": {"eps": 1.0},
    }


def test_a_damaged_best_so_far_sets_its_checkpoint_aside_like_a_damaged_state(tmp_path, capsys):
    argv = [*PATIENCE[:-5], "--patience", "5", "--json"]  # PATIENCE without its target
    out = tmp_path / "run"
    rc, _, err = _run_cli(capsys, *argv, "--epochs", "3", "--out", str(out))
    assert rc == 0, err
    best = out / "checkpoints" / "3" / "best"
    files = [p for p in best.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[:20])
    rc, o, err = _run_cli(capsys, *argv, "--epochs", "4", "--out", str(out), "--resume")
    assert rc == 0, err
    assert "skipped checkpoint 3" in err and "resuming from" in err and "(epoch 2" in err
    assert (out / "checkpoints-unreadable" / "3" / "best").is_dir()  # set aside, not deleted
    rc, ref, _ = _run_cli(capsys, *argv, "--epochs", "4")
    assert _last_json(o)["params_sha256"] == _last_json(ref)["params_sha256"]


def test_resuming_with_a_patience_already_run_out_reports_the_best_epochs_metrics(tmp_path, capsys):
    rc, o, _ = _run_cli(capsys, *PATIENCE)  # patience 2: stops two epochs after its best
    whole = _last_json(o)
    assert rc == 0 and whole["early_stopped"]
    out = str(tmp_path / "run")
    target = ["--epochs", str(whole["epoch"])]
    rc, _, err = _run_cli(capsys, *PATIENCE, "--patience", "40", *target, "--out", out)
    assert rc == 0, err  # the same epochs, never stopped early
    rc, o, err = _run_cli(capsys, *PATIENCE, "--out", out, "--resume")
    resumed = _last_json(o)
    assert rc == 0, err
    for k in ("epoch", "early_stopped", "best_epoch", "params_sha256", "test_accuracy"):
        assert resumed[k] == whole[k], k
