"""The command line: real work, --json, --out, and bad input (exit 2, one line, no traceback)."""

import gzip
import json
import subprocess
import sys

import pytest

from jbp import cli


def run(args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "jbp", *args], capture_output=True, text=True, timeout=timeout
    )


def test_gradcheck_json_reports_the_tolerances():
    r = run(["gradcheck", "--layers", "4,5,3", "--activation", "tanh", "--batch", "8", "--json"])
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["ok"] and rep["rel_autodiff"] < 1e-10 and rep["rel_fd"] < 1e-7
    assert rep["fd_evals"] == 2 * rep["n_params"] == 2 * (4 * 5 + 5 + 5 * 3 + 3)
    assert "manual vs jax.grad" in r.stdout


@pytest.mark.parametrize(
    "flags",
    [
        [
            "--layers",
            "3,6,6,1",
            "--activation",
            "relu",
            "--output",
            "sigmoid",
            "--cost",
            "binary_cross_entropy",
        ],
        [
            "--layers",
            "5,4,2",
            "--activation",
            "sigmoid,",
            "--output",
            "identity",
            "--cost",
            "squared_error",
            "--method",
            "forward",
        ],
    ],
)
def test_gradcheck_other_architectures(flags, capsys):
    flags = [f.rstrip(",") for f in flags]
    assert cli.main(["gradcheck", *flags, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["ok"]
    if "forward" in flags:
        assert rep["fd_evals"] == rep["n_params"] + 1


def test_train_json_out_and_determinism(tmp_path):
    args = ["train", "--epochs", "3", "--json", "--out", str(tmp_path / "run")]
    r1 = run(args)
    assert r1.returncode == 0, r1.stderr
    last = json.loads(r1.stdout.strip().splitlines()[-1])
    for k in (
        "epoch",
        "step",
        "train_loss",
        "test_loss",
        "test_accuracy",
        "seconds",
        "params_sha256",
    ):
        assert k in last
    assert last["epoch"] == 3
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2, 3]
    for png in ("loss.png", "accuracy.png", "lr.png"):
        assert (tmp_path / "run" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r2 = run(["train", "--epochs", "3", "--json"])
    assert json.loads(r2.stdout.strip().splitlines()[-1])["params_sha256"] == last["params_sha256"]
    r3 = run(["train", "--epochs", "3", "--json", "--seed", "1"])
    assert json.loads(r3.stdout.strip().splitlines()[-1])["params_sha256"] != last["params_sha256"]


def test_train_with_optimizer_and_schedule_flags(capsys):
    code = cli.main(
        [
            "train",
            "--optimizer",
            "momentum",
            "--lr",
            "0.5",
            "--beta",
            "0.9",
            "--schedule",
            "inverse-time",
            "--decay-rate",
            "0.5",
            "--epochs",
            "4",
            "--json",
            "--quiet",
        ]
    )
    assert code == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["lr"] == pytest.approx(0.5 / (1 + 0.5 * 3))
    assert last["test_accuracy"] > 0.5 and last["train_loss"] < 2.0


def test_divergence_exits_3(capsys):
    code = cli.main(
        [
            "train",
            "--activation",
            "relu",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--epochs",
            "2",
            "--quiet",
        ]
    )
    assert code == 3
    assert "smaller learning rate" in capsys.readouterr().err


def _corrupt_idx(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (d / (name + ".gz")).write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    return d


BAD = [
    (["--data", "cifar"], "unknown data set"),
    (["--data", "idx:/nonexistent/folder"], "/nonexistent/folder"),
    (["--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--cost", "hinge"], "unknown cost 'hinge'"),
    (["--schedule", "cosine"], "unknown schedule 'cosine'"),
    (["--lr", "-0.1"], "--lr must be a positive number, got '-0.1'"),
    (["--lr", "abc"], "--lr must be a number"),
    (["--batch-size", "0"], "--batch-size must be a positive integer or 'full', got '0'"),
    (["--epochs", "0"], "--epochs must be a positive integer, got '0'"),
    (["--layers", "64,0,10"], "--layers must be positive integers"),
    (["--layers", "32,30,10"], "--layers starts with 32 but data 'digits' has 64 input features"),
    (["--layers", "64,30,7"], "--layers ends with 7 but data 'digits' has 10 classes"),
    (["--output", "sigmoid"], "cost 'cross_entropy' does not fit output 'sigmoid'"),
    (["--beta", "1.0", "--optimizer", "momentum"], "beta must be in [0, 1), got beta=1.0"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_with_one_line(flags, message, capsys):
    assert cli.main(["train", "--epochs", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_bad_input_from_a_real_process(tmp_path):
    r = run(["train", "--data", f"idx:{_corrupt_idx(tmp_path)}"])
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "idx" in r.stderr
    r = run(["gradcheck", "--layers", "4,x"])
    assert r.returncode == 2 and "--layers" in r.stderr and "Traceback" not in r.stderr


LAYER_FILE = '''
import dataclasses
import jax.numpy as jnp
import jbp


@dataclasses.dataclass(frozen=True)
class Swish(jbp.Layer):
    """y = x·σ(x)."""

    def init(self, key, in_shape, dtype=jnp.float32):
        return (), (), in_shape

    def forward(self, params, state, x, *, train=False, key=None):
        s = 1 / (1 + jnp.exp(-x))
        return x * s, (x, s), state

    def backward(self, params, cache, dy):
        x, s = cache
        return (), dy * (s + x * s * (1 - s))


@dataclasses.dataclass(frozen=True)
class Forgetful(Swish):
    def backward(self, params, cache, dy):  # forgets the x·σ'(x) term
        x, s = cache
        return (), dy * s


net = jbp.Network(jbp.Sequential(jbp.Dense(6, "tanh"), Swish(), jbp.Dense(3)), in_shape=(4,))
'''


def test_check_a_users_layer_and_model_from_a_file(tmp_path):
    f = tmp_path / "mylayers.py"
    f.write_text(LAYER_FILE)
    r = run(["check", f"{f}:Swish", "--in-shape", "5", "--json"])
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["ok"] and [row["name"] for row in rep["rows"]] == ["x"]
    r = run(["check", f"{f}:Forgetful", "--in-shape", "5"])
    assert r.returncode == 1 and "FAIL: x" in r.stdout
    r = subprocess.run(  # a module name, imported from the working directory; a model
        [sys.executable, "-m", "jbp", "check", "mylayers:net"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "check_model" in r.stdout and "PASS" in r.stdout


@pytest.mark.parametrize(
    "target,flags,message",
    [
        ("mylayers", [], "module:attribute"),
        ("{f}:Nope", ["--in-shape", "3"], "has no attribute 'Nope'"),
        ("{f}:Swish", [], "--in-shape"),
        ("no_such_module_xyz:Swish", ["--in-shape", "3"], "not found"),
    ],
)
def test_check_bad_targets_exit_2(tmp_path, target, flags, message):
    f = tmp_path / "mylayers.py"
    f.write_text(LAYER_FILE)
    r = run(["check", target.format(f=f), *flags])
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
