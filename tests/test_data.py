"""Tests for jbp.data: every named data set, ``idx:DIR`` by name, and the value checks."""

import os

import numpy as np
import pytest
from test_idx import fake_mnist

from jbp import data
from jbp.data import DataError

# --------------------------------------------------------------------------- digits


def test_digits():
    ds = data.load("digits")
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.shape == (1347, 64) and ds.x_test.shape == (450, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0 and ds.x_test.max() <= 1.0
    assert data.n_features(ds) == 64 and data.n_classes(ds) == 10
    assert set(np.unique(ds.y_test)) == set(range(10))
    # Stratified: every class keeps its share of the test set within one example.
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target)
    assert np.all(np.abs(np.bincount(ds.y_test) - totals * 0.25) <= 1)


def test_digits_split_is_deterministic():
    a, b = data.load("digits"), data.load("digits")
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    # Pin the split itself, not just its repeatability.
    np.testing.assert_array_equal(a.y_train[:10], [7, 3, 6, 6, 7, 6, 7, 9, 2, 9])
    np.testing.assert_array_equal(a.y_test[:10], [2, 0, 4, 9, 4, 1, 2, 4, 6, 7])


# --------------------------------------------------------------------------- moons


def test_moons():
    ds = data.load("moons")
    assert ds.x_train.shape == (300, 2) and ds.y_train.shape == (300,)
    assert ds.x_test.shape == (300, 2) and ds.y_test.shape == (300,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert set(np.unique(ds.y_train)) == {0, 1} and set(np.unique(ds.y_test)) == {0, 1}
    assert data.n_features(ds) == 2 and data.n_classes(ds) == 2
    assert not np.array_equal(ds.x_train, ds.x_test)


def test_moons_matches_the_notebook():
    """load_dataset() of the deeplearning.ai optimization notebook, verbatim, then one more draw."""
    import sklearn.datasets

    # The notebook's legacy global-RNG calls, on purpose.
    saved = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(3)  # noqa: NPY002
        train_x, train_y = sklearn.datasets.make_moons(n_samples=300, noise=0.2)
        test_x, test_y = sklearn.datasets.make_moons(n_samples=300, noise=0.2)
        np.random.seed(12345)  # noqa: NPY002
        ds = data.load("moons")
        after = np.random.get_state()[1]  # noqa: NPY002
        np.random.seed(12345)  # noqa: NPY002
        untouched = np.random.get_state()[1]  # noqa: NPY002
    finally:
        np.random.set_state(saved)  # noqa: NPY002
    assert np.array_equal(after, untouched), "load('moons') must not touch the global RNG"
    np.testing.assert_array_equal(ds.x_train, train_x.astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, train_y)
    np.testing.assert_array_equal(ds.x_test, test_x.astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, test_y)
    # The notebook's first points, pinned as numbers.
    np.testing.assert_allclose(
        ds.x_train[:3],
        [[-0.21687013, 1.01544937], [0.80505015, -0.5579734], [0.71127451, -0.41006024]],
        atol=1e-6,
    )
    np.testing.assert_array_equal(ds.y_train[:6], [0, 1, 1, 1, 0, 0])


# --------------------------------------------------------------------------- fashion-mnist


def _fashion_or_skip():
    try:
        return data.load("fashion-mnist")
    except DataError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST must be present in CI: {e}")
        pytest.skip(f"Fashion-MNIST not installed: {e}")


def test_fashion_mnist():
    ds = _fashion_or_skip()
    assert ds.x_train.shape == (60000, 784) and ds.y_train.shape == (60000,)
    assert ds.x_test.shape == (10000, 784) and ds.y_test.shape == (10000,)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert data.n_features(ds) == 784 and data.n_classes(ds) == 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)


def test_fashion_mnist_data_dir_and_env(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "fashion-mnist", gz=True)  # as a subfolder
    fake_mnist(tmp_path / "flat", n_train=7)  # the folder itself
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path))
    assert data.load("fashion-mnist").x_train.shape == (5, 12)
    assert data.load("fashion-mnist", data_dir=tmp_path / "flat").x_train.shape == (7, 12)
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path / "flat"))
    assert data.load("fashion-mnist").x_train.shape == (7, 12)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("JBP_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        data.load("fashion-mnist")
    message = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "JBP_DATA_DIR" in message and str(tmp_path) in message
    assert "train-images-idx3-ubyte[.gz]" in message


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["mnist-ish", "Digits", "", "idx"])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(DataError) as e:
        data.load(name)
    assert isinstance(e.value, ValueError)
    for valid in ("digits", "moons", "fashion-mnist", "idx:DIR"):
        assert valid in str(e.value)


def test_idx_prefix_needs_a_folder():
    with pytest.raises(DataError, match=r"needs a folder"):
        data.load("idx:")


def test_n_classes_for_real_targets():
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    ds = data.Dataset(np.zeros((4, 5), np.float32), y, np.zeros((2, 5), np.float32), y[:2])
    assert data.n_features(ds) == 5 and data.n_classes(ds) == 3


def test_images_keep_their_shape_and_as_shape_reshapes():
    flat, img = data.load("digits"), data.load("digits", images=True)
    assert img.x_train.shape == (1347, 8, 8, 1) and img.x_test.shape == (450, 8, 8, 1)
    np.testing.assert_array_equal(img.x_train.reshape(1347, 64), flat.x_train)
    np.testing.assert_array_equal(data.as_shape(flat, (8, 8, 1)).x_test, img.x_test)
    assert data.n_features(img) == 64
    with pytest.raises(DataError, match=r"\(64,\) \(64 values\) cannot be reshaped.*\(7, 7, 1\)"):
        data.as_shape(flat, (7, 7, 1))
    with pytest.raises(DataError, match="not images"):
        data.load("moons", images=True)


def test_idx_images_as_nhwc(tmp_path):
    raw = fake_mnist(tmp_path)
    ds = data.load(f"idx:{tmp_path}", images=True)
    assert ds.x_train.shape == (5, 4, 3, 1) and ds.x_test.shape == (3, 4, 3, 1)
    np.testing.assert_allclose(ds.x_train[..., 0] * 255, raw["train-images-idx3-ubyte"])
    flat = data.load(f"idx:{tmp_path}")
    np.testing.assert_array_equal(ds.x_train.reshape(5, 12), flat.x_train)


# --------------------------------------------------------------------------- value checks


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_a_data_error_naming_the_split(split, bad):
    from jbp.data_checks import check_finite

    x = np.zeros((6, 3), np.float32)
    x[4, 1] = bad
    with pytest.raises(DataError, match=rf"the {split} inputs hold 1 non-finite value.*example 4"):
        check_finite(split, x, np.zeros(6, np.int32))
    y = np.zeros((6, 2))
    y[2, 0] = y[5, 1] = bad
    with pytest.raises(DataError, match=rf"the {split} targets hold 2 non-finite.*example 2"):
        check_finite(split, np.zeros((6, 3)), y)


def test_huge_finite_values_are_not_non_finite():
    from jbp.data_checks import check_finite

    check_finite("train", np.full((4, 2), 3e38, np.float32), np.zeros(4, np.int32))  # sum overflows
    check_finite("train", np.zeros((2, 2)), np.array([0, 1]))  # integer labels: nothing to check


def test_label_warnings():
    from jbp.data_checks import label_warnings

    assert label_warnings([0, 1, 2, 1], [2, 0], 3) == []
    assert label_warnings([1, 2, 3], [1, 2, 3], 4) == [
        "the labels are not the class indices 0 … 3: class(es) 0 never occur (labels must be "
        "0 … K−1 for K outputs, not codes)"
    ]
    assert label_warnings([0, 1], [0, 1, 2], 3) == [
        "class(es) 2 have no training example (test split only): the model cannot learn to "
        "predict them"
    ]
    assert "… (15 in all)" in label_warnings([0], [0], 16)[0]
    assert label_warnings(np.zeros((3, 2)), np.zeros((3, 2)), 2) == []  # real targets
    assert label_warnings([0, 1], [0, 1], None) == []  # a model without classes
