"""Data parallelism (shard_map, pmap), multi-process training, per-example gradient norms.

The conftest gives this process 4 simulated CPU devices and float64; multi-process runs are
real ``jbp train`` processes on loopback, each with a hard timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jbp
from jbp import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_digits(n_train=300, n_test=100):
    ds = jbp.data.load("digits")
    return jbp.data.Dataset(
        ds.x_train[:n_train], ds.y_train[:n_train], ds.x_test[:n_test], ds.y_test[:n_test]
    )


def _flat(params):
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree.leaves(params)])


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


NET = jbp.MLP((64, 16, 10), "tanh", "softmax", "cross_entropy")


def _fit(data, dtype, batch_size=50, **kw):
    # batch 50 over 300 examples: 6 batches; 50 does not divide by 4, so shards get padding.
    return jbp.fit(
        NET,
        jbp.optim.adam(1e-2),
        data,
        batch_size=batch_size,
        epochs=1,
        key=jax.random.key(0),
        dtype=dtype,
        **kw,
    )


@pytest.fixture(scope="module")
def data():
    return _small_digits()


@pytest.fixture(scope="module")
def reference(data):
    return {dt: _fit(data, dt) for dt in (jnp.float64, jnp.float32)}


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
@pytest.mark.parametrize("devices", [1, 2, 4])
@pytest.mark.parametrize("dtype,tol", [(jnp.float64, 1e-10), (jnp.float32, 1e-5)])
def test_devices_give_the_single_device_parameters(data, reference, mode, devices, dtype, tol):
    ref_state, ref_hist = reference[dtype]
    state, hist = _fit(data, dtype, devices=devices, parallel=mode)
    assert _rel(_flat(state.params), _flat(ref_state.params)) < tol
    assert jax.tree.leaves(state.params)[0].dtype == dtype
    assert int(state.step) == int(ref_state.step) == 6
    for k in ("train_loss", "test_loss", "test_accuracy"):
        assert hist[0][k] == pytest.approx(ref_hist[0][k], rel=tol, abs=tol)
    # The next epoch's shuffle key advanced exactly as on one device.
    assert np.array_equal(np.asarray(state.key), np.asarray(ref_state.key))


def test_autodiff_backward_is_not_summed_twice(data):
    # jax.grad of a replicated input inside shard_map sums over devices by itself; the
    # parallel step must differentiate a per-device copy, or the gradient would be N× too big.
    ref, _ = _fit(data, jnp.float64, backward="autodiff")
    state, _ = _fit(data, jnp.float64, backward="autodiff", devices=4)
    assert _rel(_flat(state.params), _flat(ref.params)) < 1e-10


def test_sgd_leaves_three_of_four_shards_empty(data):
    # Batch size 1 over 4 devices: every step, one shard holds the example, three hold padding.
    small = jbp.data.Dataset(data.x_train[:12], data.y_train[:12], *data[2:])
    ref, _ = _fit(small, jnp.float64, batch_size=1)
    state, _ = _fit(small, jnp.float64, batch_size=1, devices=4)
    assert int(state.step) == 12
    assert _rel(_flat(state.params), _flat(ref.params)) < 1e-10


def test_local_indices_cover_every_example_once():
    n, b, n_dev = 23, 7, 4  # 4 batches of 7 (last has 2), each padded to 4·2 = 8 columns
    perm = np.random.default_rng(0).permutation(n)
    nb, bb, c = parallel.layout(n, b, n_dev)
    assert (nb, bb, c) == (4, 7, 2)
    idx, real = parallel.local_indices(perm, b, n_dev, 0, n_dev * c)
    assert idx.shape == real.shape == (4, 8)
    assert sorted(idx[real].tolist()) == list(range(n))
    # Batch i holds exactly the engine's batch i, in the same order.
    for i in range(nb):
        np.testing.assert_array_equal(idx[i][real[i]], perm[i * b : (i + 1) * b])
    # Two processes' column blocks put together are the whole thing.
    a, ra = parallel.local_indices(perm, b, n_dev, 0, 4)
    z, rz = parallel.local_indices(perm, b, n_dev, 4, 8)
    np.testing.assert_array_equal(np.concatenate([a, z], 1), idx)
    np.testing.assert_array_equal(np.concatenate([ra, rz], 1), real)


def _direct_norms(params, x, y):
    # jax.grad of the plain forward pass, example by example (the engine's statistic comes
    # from the manual backward through jbp.per_example_grads).
    def one(xi, yi):
        g = jax.grad(NET.loss)(params, xi[None], yi[None])
        return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(g)))

    return np.asarray(jax.jit(jax.vmap(one))(x, y))


def test_grad_norm_statistics_equal_a_direct_computation(data):
    small = jbp.data.Dataset(data.x_train[:40], data.y_train[:40], *data[2:])
    key = jax.random.key(0)
    state, hist = jbp.fit(
        NET, jbp.optim.sgd(0.1), small, batch_size=None, epochs=1, key=key, dtype=jnp.float64,
        grad_norms=True,
    )  # fmt: skip
    # Full batch: every example's gradient is taken at the initial parameters.
    p0 = jbp.train.init_state(NET, jbp.optim.sgd(0.1), key, jnp.float64).params
    norms = _direct_norms(p0, jnp.asarray(small.x_train), jnp.asarray(small.y_train))
    rec = hist[0]
    assert rec["grad_norm_mean"] == pytest.approx(norms.mean(), rel=1e-10)
    assert rec["grad_norm_std"] == pytest.approx(norms.std(), rel=1e-8)
    assert rec["grad_norm_max"] == pytest.approx(norms.max(), rel=1e-10)
    # Over 4 devices with ragged mini-batches the statistics are the same.
    _, h1 = _fit(data, jnp.float64, grad_norms=True)
    _, h4 = _fit(data, jnp.float64, grad_norms=True, devices=4)
    for k in ("grad_norm_mean", "grad_norm_std", "grad_norm_max"):
        assert h4[0][k] == pytest.approx(h1[0][k], rel=1e-10)
    assert "grad_norm_mean" not in _fit(small, jnp.float64)[1][0]


def test_bad_arguments_say_what_was_given(data):
    with pytest.raises(ValueError, match="devices must be an integer >= 1, got devices=0"):
        _fit(data, jnp.float64, devices=0)
    with pytest.raises(ValueError, match="parallel must be one of shard_map, pmap"):
        _fit(data, jnp.float64, devices=2, parallel="vmap")
    with pytest.raises(ValueError, match="devices=8 but JAX sees 4 cpu"):
        _fit(data, jnp.float64, devices=8)
    with pytest.raises(ValueError, match="needs all of --coordinator"):
        parallel.setup(coordinator="127.0.0.1:1234")
    with pytest.raises(ValueError, match="HOST:PORT"):
        parallel.setup(coordinator="localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 1\]"):
        parallel.setup(coordinator="127.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="divide evenly"):
        parallel.setup(devices=3, coordinator="127.0.0.1:1234", num_processes=2, process_id=0)
    assert parallel.is_writer()


# ------------------------------------------------------------ real processes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", JBP_HEARTBEAT_TIMEOUT="10", PYTHONUNBUFFERED="1")
    return env


TRAIN = [sys.executable, "-m", "jbp", "train", "--data", "digits", "--layers", "_,16,_"]
TRAIN += ["--batch-size", "50", "--seed", "3"]


def _processes(n, args, folder):
    """Start n ``jbp train`` processes; their stdout/stderr go to files (no pipe can fill)."""
    port = _free_port()
    procs = []
    for i in range(n):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n)]
        with open(folder / f"out{i}", "w") as out, open(folder / f"err{i}", "w") as err:
            cmd = [*TRAIN, *args, *flags, "--process-id", str(i)]
            procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=_env())
            )
    return procs


def _finish(procs, folder, timeout):
    """Wait for every process (killing all of them past the deadline): [(rc, out, err)]."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [
        (p.returncode, (folder / f"out{i}").read_text(), (folder / f"err{i}").read_text())
        for i, p in enumerate(procs)
    ]


@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
    args = ["--epochs", "3", "--json", "--quiet"]
    with open(tmp_path / "out2", "w") as out, open(tmp_path / "err2", "w") as err:
        single = subprocess.Popen(  # one process, two devices, alongside the two processes
            [*TRAIN, *args, "--devices", "2"], stdout=out, stderr=err, cwd=ROOT, env=_env()
        )
    procs = _processes(2, [*args, "--out", str(tmp_path / "run")], tmp_path)
    results = _finish([*procs, single], tmp_path, 150)
    for rc, _, err in results:
        assert rc == 0, err[-2000:]
    p0, p1, one = (json.loads(out.strip().splitlines()[-1]) for _, out, _ in results)
    assert p0["params_sha256"] == p1["params_sha256"]
    assert p0["epoch"] == p1["epoch"] == 3
    assert p0["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)
    assert p0["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    # Process 0 alone wrote the metrics: one line per epoch, not two.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


@pytest.mark.slow
def test_a_killed_peer_makes_the_survivor_exit_with_a_message(tmp_path):
    procs = _processes(2, ["--epochs", "100000"], tmp_path)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # let training get going: two epochs done
            if (tmp_path / "out1").read_text().count("\nepoch") >= 2:
                break
            assert procs[1].poll() is None, (tmp_path / "err1").read_text()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("the two processes never started training")
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        procs[0].wait(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err = (tmp_path / "err0").read_text()
    assert procs[0].returncode == 4, err[-2000:]
    assert "another process died or was stopped" in err
    assert "Traceback" not in err
    assert elapsed < 60


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_one_device_gives_the_plain_engines_parameters_bit_for_bit(data, mode):
    for dtype in (jnp.float32, jnp.float64):
        ref, ref_hist = _fit(data, dtype, batch_size=64)
        state, hist = _fit(data, dtype, batch_size=64, devices=1, parallel=mode)
        assert jbp.params_sha256(state.params) == jbp.params_sha256(ref.params)
        assert hist[0]["train_loss"] == ref_hist[0]["train_loss"]


def _all_reduces_per_step(ep, args, mode):
    """All-reduce instructions in the compiled epoch's loop body (the scan over the steps)."""
    import re

    lowered = ep.program.lower(*((np.arange(2),) if mode == "pmap" else ()), *ep.place(args))
    text = lowered.compile().as_text()
    bodies = [c for c in re.split(r"\n(?=\S)", text) if "while/body" in c and "ENTRY" not in c]
    loop = max(bodies, key=lambda c: c.count("dot("))  # the step: the one with the matmuls
    return len(re.findall(r"= \S+ all-reduce(?:-start)?\(", loop)), text


@pytest.mark.parametrize("mode", ["shard_map", "pmap"])
def test_one_all_reduce_per_step(data, mode):
    opt = jbp.optim.adam(1e-2)
    ep = parallel.make_epoch_fn(NET, opt, 50, devices=2, parallel=mode)
    state = jbp.train.init_state(NET, opt, jax.random.key(0), jnp.float32)
    args = (state, *jbp.train.device_data(data, jnp.float32))
    per_step, text = _all_reduces_per_step(ep, args, mode)
    assert per_step == 1  # gradients, loss and count in one flat buffer
    assert "all-reduce" in text  # (and the parser did find the program's collectives)


def test_psum_flat_is_one_collective_and_exact():
    f32, i32 = jnp.float32, jnp.int32
    tree = {"a": jnp.arange(6, dtype=f32).reshape(2, 3), "b": f32(2), "i": jnp.arange(3, dtype=i32)}
    mesh = parallel.make_mesh(2)
    f = jax.jit(
        jax.shard_map(
            lambda t: parallel.psum_flat(t, parallel.AXIS), mesh=mesh, in_specs=P(), out_specs=P()
        )
    )
    out = f(tree)
    for k in tree:
        np.testing.assert_array_equal(np.asarray(out[k]), 2 * np.asarray(tree[k]))
    text = f.lower(tree).compile().as_text()
    assert text.count(" all-reduce(") + text.count(" all-reduce-start(") == 2  # float32, int32


def _wait_for_epochs(path, n, procs, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if any(p.poll() is not None for p in procs):
            return
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_one_process_stops_all_at_the_same_epoch(tmp_path, sig, code):
    out = tmp_path / "run"
    procs = _processes(2, ["--epochs", "100000", "--quiet", "--out", str(out)], tmp_path)
    _wait_for_epochs(out / "metrics.jsonl", 3, procs)
    procs[1].send_signal(sig)  # the peer, not process 0: it must still stop everyone
    results = _finish(procs, tmp_path, 120)
    assert [rc for rc, _, _ in results] == [code, code], [e[-800:] for _, _, e in results]
    saved = jbp.checkpoint.CheckpointDir(out).steps()
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").open()]
    assert saved and saved[-1] == epochs[-1]  # process 0 saved the epoch both stopped after
    assert "resume with" in results[0][2]


# Runs a command with SIGINT at its default (an exec keeps it): no preexec_fn, whose Python
# code in a forked child of this multithreaded process could deadlock.
_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@pytest.mark.slow
def test_the_launcher_forwards_signals_to_the_jbp_processes(tmp_path):
    out = tmp_path / "run"
    argv = ["--data", "digits", "--layers", "_,16,_", "--epochs", "100000", "--quiet"]
    with open(tmp_path / "log", "w") as log:
        # Its own process group, so a failure below kills the jbp processes with it (killing
        # the launcher alone would leave them training); SIGINT at its default, because bash
        # cannot trap a signal it was started ignoring (as a test runner's workers may).
        launcher = subprocess.Popen(
            [sys.executable, "-c", _DEFAULT_SIGINT, os.path.join(ROOT, "scripts", "launch"),
             "2", "--", *argv, "--out", str(out)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(), start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_epochs(out / "metrics.jsonl", 2, [launcher])
        launcher.send_signal(signal.SIGINT)
        rc = launcher.wait(timeout=90)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    log = (tmp_path / "log").read_text()
    assert rc == 130, log[-1500:]
    assert jbp.checkpoint.CheckpointDir(out).steps(), log[-1500:]
    assert "[1] " in log  # the peer's lines, prefixed


def test_an_unresolvable_coordinator_host_is_bad_input(tmp_path):
    r = subprocess.run(
        [*TRAIN, "--coordinator", "no-such-host.invalid:1234", "--num-processes", "2",
         "--process-id", "0", "--epochs", "1"],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "does not resolve" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_an_error_in_one_process_ends_the_others_promptly(tmp_path):
    out = tmp_path / "run"
    procs = _processes(2, ["--epochs", "100000", "--quiet", "--out", str(out)], tmp_path)
    _wait_for_epochs(out / "metrics.jsonl", 2, procs)
    # The next checkpoint cannot be written: process 0 fails with one line (exit 74) …
    ckpts = out / "checkpoints"
    os.rename(ckpts, tmp_path / "moved")
    ckpts.write_text("not a folder")
    t0 = time.monotonic()
    results = _finish(procs, tmp_path, 90)
    # … and its peer learns it at its next collective: exit 4 within seconds, no 60 s hang.
    assert time.monotonic() - t0 < 45
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc0 == 74 and "Traceback" not in err0, err0[-1500:]
    assert rc1 == 4 and "Traceback" not in err1, err1[-1500:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_waiting_for_the_peers_ends_the_process(tmp_path, sig):
    """Nothing is trained yet, and the wait is in C++, where a flag would never be read."""
    port = _free_port()
    p = subprocess.Popen(
        [*TRAIN, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", "0", "--epochs", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env(),
    )  # fmt: skip
    # imports and data, then process 0 opens the coordinator's port and waits there for
    # process 1, which never comes
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    time.sleep(1)  # from the open port into the wait
    assert p.poll() is None, p.communicate()
    p.send_signal(sig)
    try:
        p.wait(timeout=10)
    finally:
        p.kill()
    assert p.returncode == -sig


def test_a_coordinator_port_in_use_is_bad_input(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = subprocess.run(
            [*TRAIN, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
             "--process-id", "0", "--epochs", "1"],
            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120,
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "cannot listen on" in r.stderr and "Address already in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_processes_started_with_different_flags_are_refused_naming_them(tmp_path):
    port = _free_port()
    procs = []
    for i, epochs in enumerate(("1", "3")):
        flags = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
        with open(tmp_path / f"out{i}", "w") as out, open(tmp_path / f"err{i}", "w") as err:
            cmd = [*TRAIN, "--epochs", epochs, *flags, "--process-id", str(i)]
            procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=_env())
            )
    results = _finish(procs, tmp_path, timeout=120)
    for i, (rc, _, err) in enumerate(results):
        assert rc == 2, err
        assert "started with different settings: --epochs" in err and "Traceback" not in err
        assert ("--epochs 1 here, 3 in process 1" if i == 0 else "--epochs 3 here, 1 in") in err
