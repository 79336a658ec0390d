"""The command line: real work, --json, --out, and bad input (exit 2, one line, no traceback)."""

import gzip
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jbp
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
    (
        ["--output", "sigmoid", "--cost", "cross_entropy"],
        "cost 'cross_entropy' does not fit output 'sigmoid'",
    ),
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


# ----------------------------------------------------------- when things go wrong
RANGES = [
    (["--seed", "4294967296"], "--seed must be an integer in 0 … 4294967295"),
    (["--seed", "-1"], "--seed must be an integer in 0 … 4294967295"),
    (["--epochs", "2147483648"], "--epochs must be a positive integer, got '2147483648' "
     "(accepted: 1 … 2147483647)"),
    (["--batch-size", "99999999999"], "(accepted: 1 … 2147483647, or full)"),
    (["--patience", "0"], "--patience must be a positive integer, got '0' (accepted: 1 …"),
    (["--keep", "-2"], "--keep must be a positive integer, got '-2' (accepted: 1 …"),
    (["--checkpoint-every", "1e3"], "--checkpoint-every must be a positive integer"),
    (["--devices", "0"], "--devices must be a positive integer, got '0' (accepted: 1 …"),
    (["--process-id", "-1"], "--process-id must be an integer in 0 … 2147483647"),
    (["--lr", "inf"], "--lr must be a positive number"),
    (["--divergence-threshold", "0.5"], "--divergence-threshold must be a number >= 1"),
    (["--divergence-threshold", "nan"], "--divergence-threshold must be a number >= 1"),
    (["--layers", "_,3000000000,_"], "--layers must be positive integers, got '_,3000000000,_' "
     "(each 1 … 2147483647)"),
    (["--layers", "_,1000000000,_"], "need about 900.0 GB (75,000,000,010 parameters × 4 bytes"),
]  # fmt: skip


@pytest.mark.parametrize("flags,message", RANGES, ids=[" ".join(b[0]) for b in RANGES])
def test_out_of_range_values_exit_2_naming_the_range(flags, message, capsys):
    assert cli.main(["train", "--epochs", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--seed", "-1"], "--seed must be an integer in 0 … 4294967295"),
        (["--coordinates", "0"], "--coordinates must be a positive integer, got '0'"),
        (["--batch", "0"], "--batch must be a positive integer, got '0' (accepted: 1 …"),
        (
            ["--layers", "64,1000000000,10"],
            "gradcheck's 75,000,000,010 float64 parameters and their gradients need about 3.9 TB",
        ),
    ],  # fmt: skip
)
def test_gradcheck_ranges(flags, message, capsys):
    assert cli.main(["gradcheck", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_an_out_that_is_a_file_exits_2_before_training(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    assert cli.main(["train", "--epochs", "1", "--out", str(f)]) == 2
    o, err = capsys.readouterr()
    assert err.strip() == f"jbp train: {f}: is a file, not a folder (--out names the run folder)"
    assert "epoch" not in o and f.read_text() == "mine"


def test_a_blown_up_loss_exits_3_with_nothing_non_finite(capsys):
    """lr 1e9: every value stays finite (the loss is ~5e9), the threshold catches it."""
    code = cli.main(["train", "--data", "digits", "--optimizer", "sgd", "--lr", "1e9", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert "the train loss of epoch 1 is" in err and "more than 1000 × the initial loss" in err
    assert err.endswith("nothing saved (no --out)") and len(err.splitlines()) == 1


def test_divergence_saves_the_last_good_epoch_and_the_plots(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["train", "--optimizer", "sgd", "--lr", "0.1", "--schedule",
                     "piecewise:boundaries=1,values=1e9", "--epochs", "5", "--quiet", "--out",
                     str(out)])  # fmt: skip
    assert code == 3  # epoch 1 at lr 0.1, epoch 2 at 1e9: blown up
    err = capsys.readouterr().err.strip()
    assert "the train loss of epoch 2" in err and len(err.splitlines()) == 1
    assert err.endswith(
        f"checkpoint {out.resolve()}/checkpoints/1 holds epoch 1, the last good one"
    )
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").open()] == [1]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_adam_with_eps_0_is_named_when_it_diverges(capsys):
    code = cli.main(["train", "--optimizer", "adam:eps=0", "--epochs", "1", "--quiet"])
    assert code == 3  # digits has pixels that are always 0: their gradients are 0, 0/0 = NaN
    err = capsys.readouterr().err.strip()
    assert "non-finite" in err and "adam with eps=0 divides 0 by 0" in err


def test_labels_that_skip_classes_are_one_warning_line_each(tmp_path, capsys):
    from test_idx import fake_mnist, idx_bytes

    d = tmp_path / "idx"
    fake_mnist(d, n_train=40, n_test=10)
    train = np.arange(40, dtype=np.uint8) % 4 * 2  # 0, 2, 4, 6: classes 1, 3, 5 never occur
    test = np.array([0, 2, 4, 6, 7, 0, 2, 4, 6, 7], np.uint8)  # 7: in the test split only
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(train))
    (d / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(test))
    assert cli.main(["train", "--data", f"idx:{d}", "--epochs", "1", "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "jbp train: warning: the labels are not the class indices 0 … 7: class(es) 1, 3, 5 "
        "never occur (labels must be 0 … K−1 for K outputs, not codes)",
        "jbp train: warning: class(es) 7 have no training example (test split only): the "
        "model cannot learn to predict them",
    ]


def test_gradcheck_on_a_subset_says_so_and_warns_when_slow(capsys, monkeypatch):
    from jbp import gradient_check

    monkeypatch.setattr(gradient_check, "SLOW_SECONDS", 0.0)
    assert cli.main(["gradcheck", "--layers", "4,5,3", "--coordinates", "7", "--json"]) == 0
    o, err = capsys.readouterr()
    lines = o.strip().splitlines()
    assert lines[1].startswith(
        "finite differences: 14 loss evaluations (central, 7 random coordinates of 43), estimated"
    )
    assert "finite differences on a random subset: 7 of 43 coordinates" in o
    rep = json.loads(lines[-1])
    assert rep["ok"] and rep["fd_subset"] and rep["fd_coordinates"] == 7 and rep["fd_evals"] == 14
    assert err.startswith("jbp gradcheck: warning: finite differences will take about")
    assert "--coordinates" not in err  # already a subset: no advice to take one
    net = jbp.MLP((4, 5, 3))
    gradient_check._announce(net, net.init(jax.random.key(0)), jnp.ones((2, 4)),
                             jnp.array([0, 1]), "forward", None)  # fmt: skip
    o, err = capsys.readouterr()
    assert o.startswith("finite differences: 44 loss evaluations (forward, all 43 parameters)")
    assert err.endswith("; --coordinates N checks N random ones\n")


def test_check_refuses_inputs_too_large_for_memory(capsys):
    assert cli.main(["check", "no_such_module:layer", "--in-shape", "99999999999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--in-shape 99999999999 with --batch 4: the inputs and their gradients need about" in err
    assert len(err.splitlines()) == 1  # refused before the target is even looked up


def test_out_of_memory_past_the_estimate_is_one_line(capsys, monkeypatch):
    from jbp import train_command

    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 96000000000 bytes.\nmore"
        )

    monkeypatch.setattr(train_command, "run", oom)
    assert cli.main(["train", "--epochs", "1", "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "jbp train: out of memory: RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
        "96000000000 bytes.\n"
    )
