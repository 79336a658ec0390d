"""jbp.config and jbp.recipe: a run as a typed value, its presets, build(), the resume key."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from jbp import config, recipe
from jbp.config import RunConfig


def test_frozen_hashable_and_checked():
    c = RunConfig(data="digits", optimizer_options={"b2": 0.99})
    assert c.optimizer_options == (("b2", 0.99),)  # a dict is kept as hashable pairs
    assert hash(c) == hash(RunConfig(data="digits", optimizer_options=(("b2", 0.99),)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.lr = 0.1
    for bad, message in [
        (dict(epochs=True), "epochs must be a positive integer, got epochs=True"),
        (dict(patience=True), "patience must be a positive integer, got patience=True"),
        (dict(patience=0), "patience must be a positive integer"),
        (dict(seed=-1), "seed must be an integer >= 0"),
        (dict(lr=0.0), "lr must be a number > 0"),
        (dict(batch_size=0), "batch_size must be a positive integer or 'full', got 0"),
        (dict(dtype="float16"), "dtype must be one of float32, float64"),
        (dict(devices=0), "devices must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            RunConfig(**bad)


def test_resolve_fills_presets_and_given_values_win():
    c = config.resolve(RunConfig(data="digits"))
    assert (c.layers, c.activation, c.batch_size, c.epochs, c.lr) == (
        (None, 30, None),
        "sigmoid",
        64,
        30,
        1e-2,
    )
    assert (c.optimizer, c.schedule, c.output, c.cost) == (
        "adam",
        "constant",
        "softmax",
        "cross_entropy",
    )
    c = config.resolve(RunConfig(data="digits", lr=0.5, epochs=2, activation="tanh"))
    assert (c.lr, c.epochs, c.activation) == (0.5, 2, "tanh")
    cnn = config.resolve(RunConfig(data="fashion-mnist", model="cnn"))
    assert (cnn.batch_size, cnn.epochs, cnn.schedule) == (128, 8, "piecewise")
    assert cnn.layers is None and cnn.activation is None  # the CNN defines its own layers
    # a schedule given explicitly does not inherit the preset's options
    assert (
        config.resolve(
            RunConfig(data="fashion-mnist", model="cnn", schedule="constant")
        ).schedule_options
        == ()
    )


def test_build_makes_model_optimizer_data():
    r = recipe.build(
        RunConfig(data="digits", layers=(None, 16, None), optimizer="momentum",
                  optimizer_options=(("beta", 0.5),), schedule="staircase",
                  schedule_options=(("factor", 0.5), ("every_epochs", 1)), batch_size="full",
                  epochs=2)
    )  # fmt: skip
    assert r.model.sizes == (64, 16, 10)
    assert r.batch_size is None and r.epochs == 2 and r.dtype == jnp.float32
    state = r.optimizer.init(r.model.init(__import__("jax").random.key(0)))
    assert type(state).__name__ == "MomentumState"
    assert r.config == config.resolve(r.config)  # resolved: nothing left to fill


def test_build_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="optimizer 'adam' takes no hyperparameter 'beta'"):
        recipe.build(RunConfig(optimizer="adam", optimizer_options=(("beta", 0.9),), epochs=1))
    with pytest.raises(ValueError, match="--layers ends with 7"):
        recipe.build(RunConfig(layers=(None, 30, 7)))
    with pytest.raises(ValueError, match="--layers shape the MLP; --model cnn"):
        recipe.build(RunConfig(model="cnn", layers=(64, 10)))


def test_compat_key_records_what_resume_must_match():
    r = recipe.build(RunConfig(data="digits", epochs=3, devices=2))
    key = config.compat_key(r.config, r.model)
    assert key["sizes"] == [64, 30, 10] and key["activation"] == "sigmoid"
    assert (key["optimizer"], key["lr"], key["batch_size"], key["devices"]) == ("adam", 1e-2, 64, 2)
    assert key["parallel"] == "shard_map" and "epochs" not in key
    plain = config.compat_key(RunConfig(data="digits"), r.model)
    assert (plain["devices"], plain["parallel"]) == (1, "none")
    # what may differ on resume: the target, and (with a warning) the device layout
    assert config.MAY_DIFFER == ("epochs",) and set(config.RECORDED) == {"devices", "parallel"}
    other = config.compat_key(RunConfig(data="digits", optimizer_options=(("b2", 0.9),)), r.model)
    assert other["hparams"] == {"b2": 0.9} and other != plain


def test_ranges_and_the_divergence_threshold():
    for bad, message in [
        (dict(seed=2**32), r"seed must be an integer >= 0, got seed=4294967296 \(accepted: 0 … "
         r"4294967295\)"),
        (dict(epochs=2**31), r"\(accepted: 1 … 2147483647\)"),
        (dict(batch_size=2**31), r"\(accepted: 1 … 2147483647, or 'full'\)"),
        (dict(divergence_threshold=0.5), "divergence_threshold must be a finite number >= 1"),
        (dict(divergence_threshold=float("inf")), "divergence_threshold must be a finite"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            RunConfig(**bad)
    assert RunConfig().divergence_threshold == 1e3 and RunConfig(seed=2**32 - 1).seed == 2**32 - 1
    assert RunConfig(divergence_threshold=None).divergence_threshold is None  # off
    # not part of what a checkpoint records: changing it on --resume is allowed
    assert "divergence_threshold" not in config.compat_key(
        RunConfig(), recipe.build(RunConfig(layers=(None, 8, None))).model
    )


@pytest.mark.parametrize(
    "data, output, cost",
    [
        ("moons", "softmax", "cross_entropy"),  # the preset's binary cross-entropy needs sigmoid
        ("digits", "sigmoid", "binary_cross_entropy"),
        ("digits", "identity", "squared_error"),
        ("digits", None, "cross_entropy"),  # the preset's pair
        ("moons", None, "binary_cross_entropy"),
    ],
)
def test_an_output_given_without_a_cost_gets_one_that_fits(data, output, cost):
    assert config.resolve(config.RunConfig(data=data, output=output)).cost == cost
    given = config.RunConfig(data=data, output=output, cost="squared_error")
    assert config.resolve(given).cost == "squared_error"  # a given cost always wins


def test_one_device_is_the_plain_program_in_either_mode():
    """--devices 1 runs the plain engine's program: resuming it without --devices, or in the
    other mode, is bit-identical, so nothing is said; another device count is reported."""
    r = recipe.build(RunConfig(data="digits", devices=1, parallel="pmap"))
    key = config.compat_key(r.config, r.model)
    assert (key["devices"], key["parallel"]) == (1, "none")
    old = {**key, "parallel": "shard_map"}  # as checkpoints of --devices 1 recorded it
    assert config.relaid(old, key) == []
    two = {**key, "devices": 2, "parallel": "shard_map"}
    assert config.relaid(two, key) == ["devices", "parallel"]


def test_a_model_gets_the_idx_files_image_shape_and_empty_splits_are_refused(tmp_path):
    from test_idx import fake_mnist, idx_bytes, write

    from jbp.data import DataError

    fake_mnist(tmp_path / "wide", n_train=6, n_test=3, rows=8, cols=18)  # not a square
    r = recipe.build(RunConfig(data=f"idx:{tmp_path / 'wide'}", model="cnn", epochs=1))
    assert r.model.in_shape == (8, 18, 1) and r.data.x_train.shape == (6, 8, 18, 1)
    flat = recipe.build(RunConfig(data=f"idx:{tmp_path / 'wide'}", epochs=1))
    assert flat.data.x_train.shape == (6, 144)  # the MLP's rows
    fake_mnist(tmp_path / "empty")
    write(tmp_path / "empty" / "train-images-idx3-ubyte", idx_bytes(np.zeros((0, 4, 3), "u1")))
    write(tmp_path / "empty" / "train-labels-idx1-ubyte", idx_bytes(np.zeros((0,), "u1")))
    with pytest.raises(DataError, match="the training split is empty"):
        recipe.load_data(RunConfig(data=f"idx:{tmp_path / 'empty'}"))
