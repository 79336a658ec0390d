"""Data sets: small, deterministic, host-side (NumPy) arrays ready for training.

Every loader returns a :class:`Dataset` ``(x_train, y_train, x_test, y_test)``:
``x`` is a float32 array of shape ``(n, features)`` (images flattened row by row and
scaled to [0, 1]), ``y`` an int32 array of class labels of shape ``(n,)``. The arrays stay
on the host; the training engine moves them to devices.

=================  ==========  ========  =======  ========  ======================================
name               train       test      inputs   classes   source
=================  ==========  ========  =======  ========  ======================================
``digits``         1347        450       64       10        scikit-learn ``load_digits`` (bundled)
``moons``          300         300       2        2         ``make_moons(300, noise=.2)``, seed 3
``fashion-mnist``  60000       10000     784      10        IDX files (Debian / ``$JBP_DATA_DIR``)
``idx:DIR``        (files)     (files)   r·c      max + 1   any MNIST-format folder ``DIR``
=================  ==========  ========  =======  ========  ======================================

Splits:

- ``digits`` — the 1797 8×8 images of scikit-learn's bundled copy of the UCI
  handwritten digits (no download), pixels 0..16 divided by 16, split by
  ``train_test_split(test_size=0.25, random_state=0, stratify=y)``: fixed and stratified.
- ``moons`` — the deeplearning.ai "Optimization methods" assignment's ``load_dataset()``:
  ``np.random.seed(3); make_moons(n_samples=300, noise=.2)`` is the training set, exactly.
  The test set is the next draw from the same generator, ``make_moons(n_samples=300,
  noise=.2)`` again without reseeding. Coordinates are left unscaled (about [-1.5, 2.5]).
  The global NumPy random state is not touched (a private ``RandomState(3)`` gives the
  same stream).
- ``fashion-mnist`` — Zalando's Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017), its own
  60000/10000 split, 28×28 pixels 0..255 divided by 255. Looked up in ``data_dir`` if
  given, else ``$JBP_DATA_DIR`` if set (that folder or its ``fashion-mnist`` subfolder),
  else ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``).
- ``idx:DIR`` — a folder holding the four files of LeCun's MNIST layout,
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``). Real MNIST loads this way.

IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code byte
(0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double), a byte with
the number of dimensions, one big-endian uint32 per dimension, then the items,
big-endian, in C order. :func:`read_idx` checks all of it and raises :class:`DataError`
naming the file and the fault — never a NumPy reshape error.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "DataError",
    "Dataset",
    "NAMES",
    "as_shape",
    "load",
    "load_idx_dir",
    "n_classes",
    "n_features",
    "read_idx",
]

NAMES = ("digits", "moons", "fashion-mnist", "idx:DIR")
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_LAYOUT = "\n".join(f"  {name}[.gz]" for name in IDX_FILES)

# IDX type code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(ValueError):
    """A data set is unknown, missing, or malformed; the message says which and how to fix it."""


class Dataset(NamedTuple):
    """Train and test arrays, on the host.

    Attributes:
      x_train: float32 ``(n_train, features)``.
      y_train: int32 labels ``(n_train,)`` or float targets ``(n_train, n_out)``.
      x_test: float32 ``(n_test, features)``.
      y_test: like ``y_train``, for the test inputs.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def n_features(ds: Dataset) -> int:
    """Input width: the number of values in one example (columns, or pixels·channels)."""
    return int(math.prod(ds.x_train.shape[1:]))


def as_shape(ds: Dataset, in_shape) -> Dataset:
    """The same data with each example reshaped to ``in_shape`` (e.g. (784,) -> (28, 28, 1)).

    Row-major, as the images were flattened. Raises :class:`DataError` when the sizes differ.
    """
    in_shape = tuple(int(s) for s in in_shape)
    have = ds.x_train.shape[1:]
    if have == in_shape:
        return ds
    if math.prod(have) != math.prod(in_shape):
        raise DataError(
            f"examples of shape {tuple(have)} ({math.prod(have)} values) cannot be reshaped to "
            f"the model's input shape {in_shape} ({math.prod(in_shape)} values)"
        )
    return ds._replace(
        x_train=ds.x_train.reshape(-1, *in_shape), x_test=ds.x_test.reshape(-1, *in_shape)
    )


def n_classes(ds: Dataset) -> int:
    """Output width: max label + 1 over both splits for integer labels, else the target width."""
    if ds.y_train.ndim == 2:
        return int(ds.y_train.shape[1])
    return int(max(ds.y_train.max(initial=-1), ds.y_test.max(initial=-1))) + 1


# --------------------------------------------------------------------------- IDX


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzipped) into a native-endian NumPy array.

    Gzip is recognised by its magic bytes ``1f 8b``, not by the file name.

    Args:
      path: the file.

    Returns:
      An array of the file's dtype and shape (e.g. uint8 ``(60000, 28, 28)``).

    Raises:
      DataError: the file cannot be read, is not IDX (bad magic, unknown type code),
        or its payload is not exactly ``prod(dims) * itemsize`` bytes.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip stream ({e})") from e

    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file: {len(raw)} bytes, too short for the header")
    magic = int.from_bytes(raw[:4], "big")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in _IDX_DTYPES:
        codes = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(
            f"{path}: not an IDX file: bad magic 0x{magic:08X} (expected 0x0000TTNN: "
            f"two zero bytes, a type code TT in {{{codes}}}, NN dimensions)"
        )
    if ndim == 0:
        raise DataError(f"{path}: bad IDX header: magic 0x{magic:08X} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} header bytes, "
            f"got {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes after the data"
        raise DataError(
            f"{path}: {what}: shape {shape} of {dtype.name} needs exactly {expected} bytes "
            f"after the {header}-byte header, got {got}"
        )
    data = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(directory: Path) -> list[str]:
    return [stem for stem in IDX_FILES if _find_idx(directory, stem) is None]


def _read_pair(images_path: Path, labels_path: Path, max_classes: int | None, as_images=False):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim < 2:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (n, rows, cols), "
            f"got {images.dtype.name} {images.shape}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected integer labels of shape (n,), "
            f"got {labels.dtype.name} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; they must be the same count"
        )
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        limit = max_classes if max_classes is not None else 256
        if lo < 0 or hi >= limit:
            raise DataError(
                f"{labels_path}: labels must lie in [0, {limit - 1}], found range [{lo}, {hi}]"
            )
    x = images.astype(np.float32)
    x /= np.float32(255)  # the same values as np.divide(images, 255, dtype=float32), 10× faster
    if as_images:  # (n, rows, cols, 1): NHWC with one channel
        return x.reshape(*images.shape[:3], math.prod(images.shape[3:])), labels.astype(np.int32)
    return x.reshape(len(images), math.prod(images.shape[1:])), labels.astype(np.int32)


def load_idx_dir(
    directory: str | os.PathLike, *, max_classes: int | None = None, images: bool = False
) -> Dataset:
    """Load a folder in the MNIST layout (the four ``IDX_FILES``, each optionally ``.gz``).

    Images must be uint8; they are divided by 255 and flattened to ``rows * cols`` features,
    or, with ``images=True``, kept as ``(n, rows, cols, 1)`` (NHWC, one channel).
    When a file exists both plain and gzipped, the plain one is read.

    Args:
      directory: the folder.
      max_classes: if given, labels must be below it (10 for MNIST); otherwise below 256.

    Raises:
      DataError: a file is missing or malformed, or the two splits disagree.
    """
    directory = Path(directory)
    missing = _missing_files(directory)
    if missing:
        where = "does not exist" if not directory.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(
            f"IDX folder {directory} {where}. An MNIST-format folder holds these four files, "
            f"each plain or gzipped:\n{_IDX_LAYOUT}"
        )
    paths = [_find_idx(directory, stem) for stem in IDX_FILES]
    x_train, y_train = _read_pair(paths[0], paths[1], max_classes, images)
    x_test, y_test = _read_pair(paths[2], paths[3], max_classes, images)
    if x_train.shape[1:] != x_test.shape[1:]:
        if images:
            raise DataError(
                f"{directory}: training images have shape {x_train.shape[1:]} but test images "
                f"{x_test.shape[1:]}"
            )
        raise DataError(
            f"{directory}: training images have {x_train.shape[1]} pixels but test images "
            f"have {x_test.shape[1]}"
        )
    return Dataset(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------- named sets


def _digits(images=False) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    if images:
        x = x.reshape(-1, 8, 8, 1)
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    return Dataset(x_train, y_train, x_test, y_test)


def _moons() -> Dataset:
    from sklearn.datasets import make_moons

    # Same stream as the notebook's np.random.seed(3), without touching global state.
    rng = np.random.RandomState(3)
    x_train, y_train = make_moons(n_samples=300, noise=0.2, random_state=rng)
    x_test, y_test = make_moons(n_samples=300, noise=0.2, random_state=rng)
    return Dataset(
        x_train.astype(np.float32),
        y_train.astype(np.int32),
        x_test.astype(np.float32),
        y_test.astype(np.int32),
    )


def _fashion_mnist(data_dir: str | os.PathLike | None, images=False) -> Dataset:
    if data_dir is None:
        data_dir = os.environ.get("JBP_DATA_DIR") or None
    if data_dir is not None:
        base = Path(data_dir)
        candidates = [base / "fashion-mnist", base]
    else:
        candidates = [FASHION_MNIST_SYSTEM_DIR]
    for directory in candidates:
        if not _missing_files(directory):
            return load_idx_dir(directory, max_classes=10, images=images)
    searched = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (searched {searched}). Get it with\n"
        f"  sudo apt-get install dataset-fashion-mnist   (installs {FASHION_MNIST_SYSTEM_DIR})\n"
        f"or put the four IDX files in a folder and set JBP_DATA_DIR to it (or to its parent, "
        f"as a 'fashion-mnist' subfolder):\n{_IDX_LAYOUT}"
    )


def load(name: str, *, data_dir: str | os.PathLike | None = None, images: bool = False) -> Dataset:
    """Load a data set by name (see the module docstring for sizes, sources and splits).

    Args:
      name: ``"digits"``, ``"moons"``, ``"fashion-mnist"``, or ``"idx:DIR"``.
      data_dir: where to look for Fashion-MNIST instead of ``$JBP_DATA_DIR`` / the Debian
        location (that folder or its ``fashion-mnist`` subfolder). Ignored by the others.
      images: inputs as NHWC images ``(n, rows, cols, 1)`` instead of flat rows (digits,
        fashion-mnist, idx; ``moons`` has no images). :func:`as_shape` reshapes either way.

    Returns:
      A :class:`Dataset` of NumPy arrays: float32 inputs, int32 labels.

    Raises:
      DataError: the name is unknown, or the data set is missing or malformed.

    Example:
      >>> ds = load("digits")
      >>> ds.x_train.shape, n_features(ds), n_classes(ds)
      ((1347, 64), 64, 10)
    """
    if not isinstance(name, str):
        raise DataError(f"data set name must be a string, got {name!r}")
    if name == "digits":
        return _digits(images)
    if name == "moons":
        if images:
            raise DataError("the moons data set has 2 coordinates per example, not images")
        return _moons()
    if name == "fashion-mnist":
        return _fashion_mnist(data_dir, images)
    if name.startswith("idx:"):
        directory = name[len("idx:") :]
        if not directory:
            raise DataError("'idx:' needs a folder after the colon, e.g. 'idx:/data/mnist'")
        return load_idx_dir(Path(directory).expanduser(), images=images)
    raise DataError(f"unknown data set {name!r}; valid names: {', '.join(NAMES)}")
