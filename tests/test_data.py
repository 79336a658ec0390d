"""Tests for jbp.data: the IDX reader on files written here, and every named data set."""

import gzip
import os
import struct

import numpy as np
import pytest

from jbp import data
from jbp.data import DataError

# --------------------------------------------------------------------------- helpers


def idx_bytes(array, code=0x08):
    """Encode ``array`` as IDX (big-endian), with the given type code."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def write(path, payload, gz=False):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fake_mnist(folder, n_train=5, n_test=3, rows=4, cols=3, gz=False, seed=0):
    """Write a tiny MNIST-format folder; return the raw uint8 arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, 0] = 255  # pin the top of the scale
    arrays["train-images-idx3-ubyte"][0, 0, 1] = 0
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write(folder / (stem + (".gz" if gz else "")), idx_bytes(array), gz=gz)
    return arrays


# --------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_images_and_labels(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    # No ".gz" suffix even when gzipped: detection is by magic bytes.
    got_images = data.read_idx(write(tmp_path / "img", idx_bytes(images), gz=gz))
    got_labels = data.read_idx(write(tmp_path / "lab", idx_bytes(labels), gz=gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (2, 3, 4)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (3,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    got_images[0, 0, 0] = 1  # the result is an ordinary, writable array


@pytest.mark.parametrize(
    "code, values",
    [
        (0x09, [-128, 0, 127]),
        (0x0B, [-30000, 1, 30000]),
        (0x0C, [-(2**31), 5, 2**31 - 1]),
        (0x0D, [-1.5, 0.25, 3e10]),
        (0x0E, [-1e300, np.pi, 1e-300]),
    ],
)
def test_read_idx_other_types_big_endian(tmp_path, code, values):
    got = data.read_idx(write(tmp_path / "f", idx_bytes(values, code)))
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, np.asarray(values, dtype=got.dtype))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, gz):
    raw = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    path = write(tmp_path / "short", raw[:-5], gz=gz)
    with pytest.raises(DataError, match=r"truncated.*needs exactly 24 bytes.*got 19") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(6, np.uint8)) + b"junk")
    with pytest.raises(DataError, match=r"trailing bytes.*needs exactly 6 bytes.*got 10"):
        data.read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    raw = bytearray(idx_bytes(np.zeros(6, np.uint8)))
    raw[0] = 1
    path = write(tmp_path / "magic", bytes(raw))
    with pytest.raises(DataError, match=r"bad magic 0x01000801") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    raw[0], raw[2] = 0, 0x0A  # zero bytes fine, unknown type code
    with pytest.raises(DataError, match=r"bad magic 0x00000A01"):
        data.read_idx(write(tmp_path / "code", bytes(raw)))


@pytest.mark.parametrize(
    "name, payload, message",
    [
        (
            "picture.png",
            b"\x89PNG\r\n\x1a\n" + bytes(100),
            r"not an IDX file: bad magic 0x89504E47",
        ),
        ("notes.txt", b"hello, world\n", r"not an IDX file: bad magic"),
        ("empty", b"", r"too short for the header"),
        ("hdr", bytes([0, 0, 8, 3, 0, 0]), r"truncated IDX header: 3 dimensions need 16"),
        ("zerodim", bytes([0, 0, 8, 0]), r"0 dimensions"),
        ("badgz", b"\x1f\x8b" + bytes(30), r"corrupt or truncated gzip"),
    ],
)
def test_read_idx_foreign_files(tmp_path, name, payload, message):
    path = write(tmp_path / name, payload)
    with pytest.raises(DataError, match=message) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))[:-12])
    with pytest.raises(DataError, match=r"cut.gz"):
        data.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read IDX file"):
        data.read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- idx:DIR


def test_idx_pixels_are_the_float32_quotient_by_255_exactly(tmp_path):
    """Every byte value becomes float32(v) / float32(255), correctly rounded (not v · 1/255)."""
    fake_mnist(tmp_path, rows=8, cols=8)
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(pixels))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)))
    ds = data.load(f"idx:{tmp_path}")
    want = np.divide(pixels.reshape(4, 64), np.float32(255), dtype=np.float32)
    np.testing.assert_array_equal(ds.x_train, want)
    assert ds.x_train.dtype == np.float32


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_end_to_end(tmp_path, gz):
    raw = fake_mnist(tmp_path / "mnist", gz=gz)
    ds = data.load(f"idx:{tmp_path / 'mnist'}")
    assert isinstance(ds, data.Dataset) and len(ds) == 4
    assert ds.x_train.shape == (5, 12) and ds.x_test.shape == (3, 12)
    assert ds.y_train.shape == (5,) and ds.y_test.shape == (3,)
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert all(isinstance(a, np.ndarray) for a in ds)  # host arrays, not jax arrays
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    np.testing.assert_allclose(
        ds.x_train, raw["train-images-idx3-ubyte"].reshape(5, 12) / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_test, raw["t10k-labels-idx1-ubyte"])
    assert data.n_features(ds) == 12
    assert data.n_classes(ds) == 1 + max(ds.y_train.max(), ds.y_test.max())


def test_idx_dir_missing_file_names_layout(tmp_path):
    fake_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError) as e:
        data.load(f"idx:{tmp_path}")
    message = str(e.value)
    assert "lacks t10k-labels-idx1-ubyte" in message
    for stem in data.IDX_FILES:
        assert f"{stem}[.gz]" in message


def test_idx_dir_nonexistent(tmp_path):
    with pytest.raises(DataError, match=r"(?s)does not exist.*train-images-idx3-ubyte\[\.gz\]"):
        data.load(f"idx:{tmp_path / 'nowhere'}")


def test_idx_dir_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match=r"5 images but .* 4 labels"):
        data.load(f"idx:{tmp_path}")


def test_idx_dir_labels_out_of_range(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, -2, 3]), 0x09))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 255\].*\[-2, 3\]"):
        data.load(f"idx:{tmp_path}")
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.array([1, 12, 3])))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]"):
        data.load_idx_dir(tmp_path, max_classes=10)


def test_idx_dir_pixel_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    with pytest.raises(DataError, match=r"12 pixels but test images have 4"):
        data.load(f"idx:{tmp_path}")


def test_idx_dir_rejects_non_uint8_images(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((5, 4, 3)), 0x0D))
    with pytest.raises(DataError, match=r"expected uint8 images"):
        data.load(f"idx:{tmp_path}")


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
