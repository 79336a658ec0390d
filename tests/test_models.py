"""The ready-made CNN: checked, trained from the command line, resumed exactly, over devices."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
from jbp.data import Dataset

SMALL = dict(width=(4, 8, 16))  # the CNN's shape, narrow enough for the test suite


@pytest.fixture(scope="module")
def digits():
    ds = jbp.data.load("digits", images=True)
    return Dataset(ds.x_train[:150], ds.y_train[:150], ds.x_test[:60], ds.y_test[:60])


def test_the_cnn_passes_check_model():
    net = jbp.models.cnn((8, 8, 1), 10, batchnorm=True, dropout=0.0, **SMALL)
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 1), jnp.float64)
    report = jbp.check_model(net, x, jnp.array([1, 4, 9]))
    assert report.ok, report.table()


def test_a_batchnorm_dropout_cnn_resumes_bit_exactly(digits):
    net = jbp.models.cnn((8, 8, 1), 10, batchnorm=True, dropout=0.25, **SMALL)
    assert net.batch_coupled and net.stochastic
    opt, kw = jbp.optim.adam(3e-3), dict(batch_size=32, key=jax.random.key(0))
    full, _ = jbp.fit(net, opt, digits, epochs=3, **kw)
    half, _ = jbp.fit(net, opt, digits, epochs=1, **kw)
    resumed, _ = jbp.fit(net, opt, digits, epochs=3, state=half, batch_size=32)
    assert jbp.params_sha256(resumed) == jbp.params_sha256(full)
    assert not np.allclose(full.model_state[1]["mean"], 0)  # running statistics moved


def test_two_devices_give_the_one_device_test_loss_in_float32(digits):
    """A BatchNorm + Dropout CNN: the statistics are global (psum) and each device keeps its
    block of the whole batch's dropout masks, so 2 devices train as 1 does."""
    net = jbp.models.cnn((8, 8, 1), 10, batchnorm=True, dropout=0.25, **SMALL)
    kw = dict(batch_size=40, epochs=2, key=jax.random.key(0), dtype=jnp.float32)
    _, one = jbp.fit(net, jbp.optim.adam(3e-3), digits, **kw)
    _, two = jbp.fit(net, jbp.optim.adam(3e-3), digits, devices=2, **kw)
    for a, b in zip(one, two, strict=True):
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-5)


def test_dropout_masks_do_not_depend_on_the_device_count(digits):
    """float64, a ragged last batch (150 = 3·40 + 30), 3 devices (40 = 3·14 − 2 padded)."""
    net = jbp.models.cnn((8, 8, 1), 10, dropout=0.5, **SMALL)
    kw = dict(batch_size=40, epochs=2, key=jax.random.key(1), dtype=jnp.float64)
    one, _ = jbp.fit(net, jbp.optim.adam(3e-3), digits, **kw)
    for n in (2, 3):
        many, _ = jbp.fit(net, jbp.optim.adam(3e-3), digits, devices=n, **kw)
        for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(many.params), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-9, atol=1e-12)


def _dropout_net():
    layers = jbp.Sequential(jbp.Flatten(), jbp.Dense(12, "tanh"), jbp.Dropout(0.5), jbp.Dense(10))
    return jbp.Network(layers, in_shape=(8, 8, 1))


def test_per_example_gradients_of_a_dropout_network_average_to_its_batch_gradient(digits):
    """Each example keeps its own row of the batch's masks (it used to get row 0's: the same
    mask for every example, whose mean is not the batch gradient)."""
    net, key = _dropout_net(), jax.random.key(5)
    params, _ = net.initialize(jax.random.key(0), jnp.float64)
    x, y = digits.x_train[:7], digits.y_train[:7]
    pe = jbp.per_example_grads(net, params, x, y, key=key)
    _, g = net.loss_and_grad(params, x, y, key=key)
    for a, b in zip(jax.tree.leaves(pe), jax.tree.leaves(g), strict=True):
        np.testing.assert_allclose(np.asarray(a).mean(0), np.asarray(b), rtol=1e-12, atol=1e-15)
    one = net.loss_and_grad(params, x[3:4], y[3:4], key=key)[1]  # row 0's mask, not row 3's
    assert not np.allclose(pe[1]["W"][3], one[1]["W"])


def test_gradient_norms_of_a_dropout_network_do_not_depend_on_the_device_count(digits):
    net = _dropout_net()
    kw = dict(batch_size=40, epochs=1, key=jax.random.key(1), dtype=jnp.float64, grad_norms=True)
    _, (one,) = jbp.fit(net, jbp.optim.sgd(0.1), digits, **kw)
    for n, how in ((2, "shard_map"), (3, "pmap")):
        _, (many,) = jbp.fit(net, jbp.optim.sgd(0.1), digits, devices=n, parallel=how, **kw)
        for k in ("grad_norm_mean", "grad_norm_std", "grad_norm_max"):
            assert many[k] == pytest.approx(one[k], rel=1e-12), (n, k)


def _train(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "jbp", "train", "--data", "digits", "--json", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_train_a_cnn_and_a_users_model_from_the_command_line(tmp_path):
    r = _train("--model", "cnn", "--epochs", "2", "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.strip().splitlines()[-1])
    assert final["epoch"] == 2 and final["test_accuracy"] > 0.3
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    r = _train("--model", "cnn", "--epochs", "3", "--out", str(tmp_path / "run"), "--resume")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["epoch"] == 3
    (tmp_path / "mine.py").write_text(
        "import jbp\n"
        "def model(in_shape, n_classes):\n"
        "    layers = jbp.Sequential(jbp.Flatten(), jbp.Dense(16, 'tanh'), jbp.Dense(n_classes))\n"
        "    return jbp.Network(layers, in_shape=in_shape)\n"
    )
    r = _train("--model", "mine:model", "--epochs", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"] > 0.3


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "cnn", "--layers", "64,10"], "--layers shape the MLP"),
        (["--model", "resnet"], "mlp, cnn or module:function"),
        (["--model", "no_such_mod_xyz:f"], "not found"),
    ],
)
def test_bad_models_exit_2(args, message):
    r = _train(*args, "--epochs", "1")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


BN_DROPOUT_CNN = (
    "import jbp\n"
    "def model(in_shape, n_classes):\n"
    "    return jbp.models.cnn(in_shape, n_classes, batchnorm=True, dropout=0.25,\n"
    "                          width=(4, 8, 16))\n"
)


def test_a_batchnorm_dropout_cnn_stopped_by_sigint_resumes_bit_identically(
    tmp_path, capsys, monkeypatch
):
    """Ctrl-C between two epochs of a BatchNorm + Dropout CNN, then --resume: the same run.

    The parameters and the test loss (evaluated with the running statistics, so the model
    state too) equal those of a run never stopped, bit for bit.
    """
    import os
    import signal

    from jbp import cli, run

    (tmp_path / "bn.py").write_text(BN_DROPOUT_CNN)
    argv = ["train", "--data", "digits", "--model", f"{tmp_path / 'bn.py'}:model", "--quiet"]
    argv += ["--epochs", "3", "--batch-size", "64", "--lr", "3e-3", "--json"]

    def last(out):
        return json.loads(out.strip().splitlines()[-1])

    assert cli.main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = last(capsys.readouterr().out)
    after_epoch = run.Run.after_epoch

    def interrupted(self, state, record):
        after_epoch(self, state, record)
        if record["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, between two epochs

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(run.Run, "after_epoch", interrupted)
    out = tmp_path / "run"
    try:
        rc = cli.main([*argv, "--out", str(out)])
    finally:
        for s, h in handlers.items():  # a stopped jbp train keeps acknowledging signals
            signal.signal(s, h)
    o, err = capsys.readouterr()
    assert rc == 130 and last(o)["epoch"] == 1, err
    monkeypatch.undo()
    assert cli.main([*argv, "--out", str(out), "--resume"]) == 0
    resumed = last(capsys.readouterr().out)
    assert resumed["epoch"] == 3
    assert resumed["params_sha256"] == whole["params_sha256"]
    assert resumed["test_loss"] == whole["test_loss"]
