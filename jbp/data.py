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

The IDX reader lives in :mod:`jbp.idx`, the :class:`Dataset` type and its helpers in
:mod:`jbp.dataset`; both are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jbp.dataset import DataError, Dataset, as_shape, n_classes, n_features
from jbp.idx import IDX_FILES, IDX_LAYOUT, load_idx_dir, missing_files, read_idx

__all__ = [
    "IDX_FILES",
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
        if not missing_files(directory):
            return load_idx_dir(directory, max_classes=10, images=images)
    searched = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (searched {searched}). Get it with\n"
        f"  sudo apt-get install dataset-fashion-mnist   (installs {FASHION_MNIST_SYSTEM_DIR})\n"
        f"or put the four IDX files in a folder and set JBP_DATA_DIR to it (or to its parent, "
        f"as a 'fashion-mnist' subfolder):\n{IDX_LAYOUT}"
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
