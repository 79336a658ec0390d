"""Tests for jbp.idx: the IDX reader on files written here, and MNIST-layout folders.

The helpers (``idx_bytes``, ``write``, ``fake_mnist``) are shared with the data-set and
command-line tests.
"""

import gzip
import os
import struct

import numpy as np
import pytest

from jbp import data, idx
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
    got_images = idx.read_idx(write(tmp_path / "img", idx_bytes(images), gz=gz))
    got_labels = idx.read_idx(write(tmp_path / "lab", idx_bytes(labels), gz=gz))
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
    got = idx.read_idx(write(tmp_path / "f", idx_bytes(values, code)))
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, np.asarray(values, dtype=got.dtype))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated(tmp_path, gz):
    raw = idx_bytes(np.zeros((2, 3, 4), np.uint8))
    path = write(tmp_path / "short", raw[:-5], gz=gz)
    with pytest.raises(DataError, match=r"truncated.*needs exactly 24 bytes.*got 19") as e:
        idx.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "long", idx_bytes(np.zeros(6, np.uint8)) + b"junk")
    with pytest.raises(DataError, match=r"trailing bytes.*needs exactly 6 bytes.*got 10"):
        idx.read_idx(path)


def test_read_idx_bad_magic(tmp_path):
    raw = bytearray(idx_bytes(np.zeros(6, np.uint8)))
    raw[0] = 1
    path = write(tmp_path / "magic", bytes(raw))
    with pytest.raises(DataError, match=r"bad magic 0x01000801") as e:
        idx.read_idx(path)
    assert str(path) in str(e.value)
    raw[0], raw[2] = 0, 0x0A  # zero bytes fine, unknown type code
    with pytest.raises(DataError, match=r"bad magic 0x00000A01"):
        idx.read_idx(write(tmp_path / "code", bytes(raw)))


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
        idx.read_idx(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_read_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))[:-12])
    with pytest.raises(DataError, match=r"cut.gz"):
        idx.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read IDX file"):
        idx.read_idx(tmp_path / "nope")


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
    for stem in idx.IDX_FILES:
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
        idx.load_idx_dir(tmp_path, max_classes=10)


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
