"""jbp.run.Run: a run folder's start / after each epoch / finish, and what resume records."""

import json
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
