"""jbp.options: name:key=value specs, keys checked against the functions' own signatures."""

import pytest

from jbp import optim, options, schedules


@pytest.mark.parametrize(
    "text, name, opts",
    [
        ("adam", "adam", {}),
        ("adam:", "adam", {}),
        ("adam:b1=0.9,b2=0.99", "adam", {"b1": 0.9, "b2": 0.99}),
        (
            "momentum:beta=0.8,bias_correction=true",
            "momentum",
            {"beta": 0.8, "bias_correction": True},
        ),
        ("staircase:factor=0.5,every=10", "staircase", {"factor": 0.5, "every": 10}),
        (
            "piecewise:boundaries_epochs=10,20,values=1e-2,1e-3",
            "piecewise",
            {"boundaries_epochs": [10, 20], "values": [1e-2, 1e-3]},
        ),
    ],
)
def test_parse_spec(text, name, opts):
    assert options.parse_spec(text) == (name, opts)


@pytest.mark.parametrize(
    "text, message",
    [
        (":b1=0.9", "needs a name"),
        ("adam:0.9", "must be key=value"),
        ("adam:b1=fast", "b1='fast' is not a number"),
        ("adam:b1=0.9,b1=0.8", "b1 is given twice"),
        ("adam:1x=2", "'1x' is not an option name"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(options.OptionError, match=message):
        options.parse_spec(text, "--optimizer")


def test_accepted_keys_are_the_signatures():
    assert optim.hyperparameters("adam") == ("b1", "b2", "eps")
    assert optim.hyperparameters("momentum") == ("beta", "bias_correction")
    assert optim.hyperparameters("sgd") == ()
    assert schedules.options("staircase") == ("factor", "every_epochs")
    assert schedules.options("inverse_time") == ("decay_rate", "time_interval")
    assert schedules.options("constant") == ()
    # the defaults live in one place: the functions' signatures
    assert options.defaults(schedules.staircase, schedules.RUN_SUPPLIED) == {
        "factor": 0.5,
        "every_epochs": 10,
    }


def test_prefixes_expand_and_ambiguity_is_refused():
    keys = schedules.options("staircase")
    assert options.expand_keys("schedule", "staircase", {"every": 3}, keys) == {"every_epochs": 3}
    with pytest.raises(options.OptionError, match="'b' could be b1 or b2"):
        options.expand_keys("optimizer", "adam", {"b": 0.9}, optim.hyperparameters("adam"))
    with pytest.raises(
        options.OptionError, match="takes no hyperparameter 'zz'; it takes: b1, b2, eps"
    ):
        options.expand_keys("optimizer", "adam", {"zz": 1}, optim.hyperparameters("adam"))


def test_format_spec_round_trips():
    for text in (
        "adam",
        "adam:b1=0.5,b2=0.99",
        "piecewise:boundaries_epochs=4,8,values=0.01,0.001",
    ):
        name, opts = options.parse_spec(text)
        assert options.parse_spec(options.format_spec(name, opts)) == (name, opts)


def test_piecewise_by_name_takes_either_form_of_values():
    after = schedules.get("piecewise", 0.1, boundaries_epochs=[2], values=[0.01])
    full = schedules.get("piecewise", 0.1, boundaries_epochs=[2], values=[0.1, 0.01])
    direct = schedules.piecewise([2], [0.1, 0.01])
    assert [float(after(e)) for e in (1, 2)] == [float(full(e)) for e in (1, 2)]
    assert [float(full(e)) for e in (1, 2)] == [float(direct(e)) for e in (1, 2)]
    with pytest.raises(ValueError, match=r"values\[0\]=0.2 is the initial learning rate"):
        schedules.get("piecewise", 0.1, boundaries_epochs=[2], values=[0.2, 0.01])
