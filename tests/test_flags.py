"""jbp train's flags: --optimizer/--schedule NAME:key=value specs, the aliases, the config."""

import json
import subprocess
import sys

import pytest

from jbp import cli, config, flags

BASE = ["train", "--epochs", "2", "--quiet", "--json", "--layers", "_,12,_"]


def _train(capsys, *argv):
    rc = cli.main([*BASE, *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out.strip().splitlines()[-1]) if rc == 0 else None), err.strip()


def test_specs_train_exactly_as_the_alias_flags(capsys):
    rc, spec, _ = _train(capsys, "--optimizer", "momentum:beta=0.8,bias_correction=true",
                         "--schedule", "staircase:factor=0.5,every=1", "--lr", "0.1")  # fmt: skip
    assert rc == 0
    rc, alias, _ = _train(capsys, "--optimizer", "momentum", "--beta", "0.8", "--bias-correction",
                          "--schedule", "staircase", "--factor", "0.5", "--every", "1", "--lr", "0.1")  # fmt: skip
    assert rc == 0 and alias["params_sha256"] == spec["params_sha256"]
    rc, plain, _ = _train(capsys, "--optimizer", "momentum", "--lr", "0.1")
    assert plain["params_sha256"] != spec["params_sha256"]  # the options did something
    assert spec["lr"] == pytest.approx(0.1 * 0.5**1)  # the last step's lr: epoch 1 of staircase


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--optimizer", "adam:beta=0.9"],
            "optimizer 'adam' takes no hyperparameter 'beta'; it takes: b1, b2, eps",
        ),
        (
            ["--schedule", "staircase:rate=2"],
            "schedule 'staircase' takes no parameter 'rate'; it takes: factor, every_epochs",
        ),
        (["--optimizer", "adam:b=0.9"], "'b' could be b1 or b2"),
        (["--optimizer", "adam:b1=high"], "b1='high' is not a number"),
        (["--optimizer", "adam:b1=1.5"], "b1 must be in [0, 1), got b1=1.5"),
        (["--schedule", "cosine:k=1"], "unknown schedule 'cosine'; valid names: constant"),
        (["--factor", "0.5"], "--factor needs --schedule NAME"),
        (["--optimizer", ""], "--optimizer needs a value, got ''"),
        (["--activation", " "], "--activation needs a value"),
        (["--beta1", "abc"], "--beta1: 'abc' is not a number or true/false"),
        (["--optimizer", "adam:b1=0.5", "--beta1", "0.8"], "b1 is given twice"),
        (["--schedule", "staircase:every=4", "--every", "2"], "every_epochs is given twice"),
        (
            ["--schedule", "piecewise:boundaries=2,values=0.5,0.1,0.01"],
            "one value (the lr after it) per boundary",
        ),
    ],
)
def test_bad_specs_exit_2_naming_what_is_accepted(capsys, argv, message):
    rc, _, err = _train(capsys, *argv)
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err


def test_help_lists_the_registries():
    text = subprocess.run([sys.executable, "-m", "jbp", "train", "--help"], capture_output=True,
                          text=True).stdout  # fmt: skip
    for name in (
        "adam:b1,b2,eps",
        "momentum:beta,bias_correction",
        "staircase:factor,every_epochs",
    ):
        assert name in text
    assert "--beta1" not in text  # aliases work but are not advertised


def test_run_config_and_to_argv_round_trip():
    argv = ["--data", "digits", "--optimizer", "adam:b2=0.99", "--schedule",
            "piecewise:boundaries=3,values=1e-3", "--batch-size", "full", "--patience", "2"]  # fmt: skip
    c = flags.run_config(flags.train_parser().parse_args(argv))
    assert c.optimizer_options == (("b2", 0.99),)
    assert c.schedule_options == (("boundaries_epochs", (3,)), ("values", (1e-3,)))
    assert (c.batch_size, c.patience) == ("full", 2)
    again = flags.run_config(flags.train_parser().parse_args(flags.to_argv(c)))
    assert again == c
    assert flags.to_argv(config.RunConfig()) == []


def test_the_divergence_threshold_flag():
    def cfg(*argv):
        return flags.run_config(flags.train_parser().parse_args(list(argv)))

    assert cfg().divergence_threshold == config.RunConfig().divergence_threshold == 1e3
    assert cfg("--divergence-threshold", "off").divergence_threshold is None
    assert cfg("--divergence-threshold", "50").divergence_threshold == 50.0
    for c in (cfg("--divergence-threshold", "off"), cfg("--divergence-threshold", "50")):
        assert flags.run_config(flags.train_parser().parse_args(flags.to_argv(c))) == c
    assert flags.to_argv(cfg("--divergence-threshold", "off")) == ["--divergence-threshold", "off"]


def test_to_argv_keeps_options_of_the_presets_optimizer():
    c = config.RunConfig(optimizer_options=(("b2", 0.99),))
    argv = flags.to_argv(c)
    assert argv == ["--optimizer", "adam:b2=0.99"]
    assert flags.run_config(flags.train_parser().parse_args(argv)).optimizer_options == (
        ("b2", 0.99),
    )


def test_out_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert flags.train_parser().parse_args(["--out", "~/run"]).out == str(tmp_path / "run")
