"""The container every loader returns, its error type, and helpers on it.

A :class:`Dataset` is ``(x_train, y_train, x_test, y_test)`` of host (NumPy) arrays: ``x``
float32, one example per row (flat ``(n, features)`` or images ``(n, rows, cols, 1)``), ``y``
int32 class labels ``(n,)`` or float targets ``(n, n_out)``. :class:`DataError` is what every
data problem raises, with a message that says what was found and how to fix it.
:mod:`jbp.data` re-exports all of this.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

__all__ = ["DataError", "Dataset", "as_shape", "n_classes", "n_features"]


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
