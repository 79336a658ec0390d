"""jbp.run.Run: a run folder's start / after each epoch / finish, and what resume records."""

import json
import os
import subprocess
import sys

import jax
import pytest

from jbp import checkpoint, config, recipe, run

CFG = config.RunConfig(data="digits", layers=(None, 8, None), epochs=2)


def test_without_a_folder_every_step_is_a_no_op():
    r = run.Run(None)
    assert r.start(recipe.build(CFG), jax.random.key(0)) is None
    r.after_epoch(None, {"epoch": 1})
    r.finish()
    r.close()
    assert r.records() == [] and r.checkpoint_path(1) is None
    with pytest.raises(ValueError, match="--resume needs --out DIR"):
        run.Run(None, resume=True)


def test_metrics_before_checkpoints_and_the_key_recorded(tmp_path):
    from jbp import train

    rec = recipe.build(CFG)
    r = run.Run(tmp_path / "out", checkpoint_every=2)
    assert r.start(rec, jax.random.key(0)) is None
    state, _ = train.fit(rec.model, rec.optimizer, rec.data, batch_size=rec.batch_size,
                         epochs=3, key=jax.random.key(0), callback=r.after_epoch)  # fmt: skip
    assert r.saved == 2  # every 2 epochs …
    r.finish()  # … and always the last
    r.close()
    assert [x["epoch"] for x in r.records()] == [1, 2, 3]
    assert checkpoint.CheckpointDir(tmp_path / "out").steps() == [2, 3]
    meta = checkpoint.read_meta(tmp_path / "out" / "checkpoints" / "3")
    assert meta["config"] == json.loads(json.dumps(config.compat_key(CFG, rec.model)))
    with pytest.raises(ValueError, match="already holds checkpoints .epoch 3.: add --resume"):
        run.Run(tmp_path / "out").start(rec, jax.random.key(0))


def test_resume_on_another_device_count_says_it_is_not_bit_identical(tmp_path):
    argv = [
        sys.executable,
        "-m",
        "jbp",
        "train",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(tmp_path),
    ]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    argv[5] = "2"
    again = subprocess.run([*argv, "--resume", "--devices", "2"], capture_output=True, text=True,
                           timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "saved with devices=1, this run has devices=2: it continues, but is not" in again.stderr
    assert [json.loads(x)["epoch"] for x in (tmp_path / "metrics.jsonl").open()] == [1, 2]


# ------------------------------------------------------------- one run per folder
HOLD = """
import sys, time
from jbp.rundir import RunDir
folder = RunDir(sys.argv[1])
folder.lock()  # held while folder lives
print("locked", flush=True)
time.sleep(300)
"""
SMALL = ["train", "--quiet", "--layers", "_,8,_", "--compile-cache", "off"]


def test_a_second_run_on_a_live_folder_is_refused_and_a_killed_one_never_blocks(tmp_path, capsys):
    from jbp import cli

    out = tmp_path / "run"
    assert cli.main([*SMALL, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    before = (out / "metrics.jsonl").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"]):  # a fresh run and a resume alike
            assert cli.main([*SMALL, "--epochs", "2", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err.strip()
            assert f"in use by process {holder.pid}" in err and str(out) in err
            assert len(err.splitlines()) == 1 and "Traceback" not in err
            assert (out / "metrics.jsonl").read_bytes() == before  # untouched
    finally:
        holder.kill()  # SIGKILL: the holder never unlocks, the system does
        holder.wait()
    assert cli.main([*SMALL, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").open()] == [1, 2]


def test_the_lock_is_held_from_the_constructor_to_close(tmp_path):
    from jbp import rundir

    first = run.Run(tmp_path)
    with pytest.raises(rundir.FolderBusy, match=rf"in use by process {os.getpid()}, a live run"):
        run.Run(tmp_path, resume=True)
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    first.close()
    run.Run(tmp_path).close()  # free again; the file stays (see jbp.rundir)
    assert (tmp_path / ".lock").exists()


# ------------------------------------------------------------- I/O failures
def test_a_temporary_file_never_writes_through_a_planted_link(tmp_path):
    from jbp import rundir

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    folder = rundir.RunDir(tmp_path / "run")
    (folder.root / "metrics.jsonl.tmp").symlink_to(outside)
    folder.write_metrics([{"epoch": 1}])
    assert outside.read_text() == "keep me"  # neither written nor truncated
    assert folder.read_metrics() == [{"epoch": 1}]
    assert not (folder.root / "metrics.jsonl.tmp").exists()
    assert not (folder.root / "metrics.jsonl").is_symlink()


def test_a_folder_where_the_metrics_belong_is_named_in_the_error(tmp_path):
    from jbp import rundir

    folder = rundir.RunDir(tmp_path / "run")
    (folder.root / "metrics.jsonl").mkdir()
    with pytest.raises(OSError) as e:
        folder.write_metrics([{"epoch": 1}])
    assert e.value.filename == str(folder.root / "metrics.jsonl")  # not the temporary's name
    assert not (folder.root / "metrics.jsonl.tmp").exists()


def test_an_unusable_out_is_refused_up_front(tmp_path):
    from jbp import rundir
    from jbp.util import PathError

    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(PathError, match="is a file, not a folder"):
        rundir.RunDir(f)
    with pytest.raises(PathError, match="Not a directory"):
        rundir.RunDir(f / "sub")


def test_an_unwritable_out_is_refused_up_front(tmp_path, monkeypatch):
    """The permission check itself, on any user (root passes os.access; see the next test)."""
    from jbp import rundir
    from jbp.util import PathError

    monkeypatch.setattr(rundir.os, "access", lambda *a: False)
    with pytest.raises(PathError, match=r"ro: not writable \(permission denied\)"):
        rundir.RunDir(tmp_path / "ro")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_out_is_refused_up_front(tmp_path, capsys):
    from jbp import cli

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert cli.main([*SMALL, "--epochs", "1", "--out", str(ro)]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert err == f"jbp train: {ro}: not writable (permission denied)"


def test_a_plot_that_cannot_be_written_is_a_warning(tmp_path, capsys):
    from jbp import cli

    out = tmp_path / "run"
    (out / "loss.png").mkdir(parents=True)  # a folder where the plot goes
    assert cli.main([*SMALL, "--epochs", "1", "--out", str(out), "--json"]) == 0
    o, err = capsys.readouterr()
    assert json.loads(o.strip().splitlines()[-1])["epoch"] == 1  # the result is not lost
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "loss.png" in warnings[0] and "Traceback" not in err
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"  # the others are written


DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
from jbp.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    """Every file is capped at 100 kB: metrics fit, the 1.8 MB checkpoint does not."""
    out = tmp_path / "run"
    argv = [*SMALL, "--layers", "_,2000,_", "--epochs", "2", "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", DISK_FULL, *argv], capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 74, r.stderr
    assert r.stderr.strip() == (
        f"jbp train: {out.resolve()}/checkpoints/1: could not save the checkpoint: File too "
        f"large; no checkpoint of this run is saved"
    )
    assert checkpoint.CheckpointDir(out).steps() == []


def test_patience_on_a_checkpoint_without_a_best_so_far_says_so(tmp_path, capsys):
    from jbp import train

    rec = recipe.build(CFG)
    key = config.compat_key(CFG, rec.model)
    state = train.init_state(rec.model, rec.optimizer, jax.random.key(0), rec.dtype)
    d = checkpoint.CheckpointDir(tmp_path)
    d.save(state._replace(epoch=jax.numpy.asarray(1, jax.numpy.int32)), config=key)  # no best
    d.close()
    r = run.Run(tmp_path, resume=True)
    try:
        assert int(r.start(rec, jax.random.key(0)).epoch) == 1 and r.best is None
        early = r.early_stopping(2)
        assert early.best_epoch == 0 and r.early is early
    finally:
        r.close()
    assert "checkpoint 1 holds no early-stopping record" in capsys.readouterr().err
