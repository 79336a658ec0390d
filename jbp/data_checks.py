"""Checks of a data set's values before training: data errors are data errors.

* :func:`check_finite` — a NaN or ±inf in the inputs or real-valued targets is a
  :class:`jbp.data.DataError` naming the split, raised before the first step: otherwise it
  would surface as "training diverged … try a smaller learning rate", the wrong advice.
* :func:`label_warnings` — integer labels should be the class indices 0 … K−1 of the model's
  K outputs, each class with training examples. Labels that skip classes (codes such as 1 … K,
  or a sparse subset) and classes seen only in the test split still train, but a class with
  no training example can never be predicted: each is one :class:`DataWarning`.
"""

import warnings

import numpy as np

from jbp.data import DataError


class DataWarning(UserWarning):
    """The data will train, but probably not as meant (see :func:`label_warnings`)."""


def _non_finite(a):
    """``(count, first example index)`` of the non-finite values of a float array."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.inexact) or a.size == 0:
        return 0, None
    if np.isfinite(np.sum(a, dtype=np.float64)):  # the common case, without a mask
        return 0, None
    bad = ~np.isfinite(a.reshape(a.shape[0], -1) if a.ndim > 1 else a[:, None])
    rows = np.flatnonzero(bad.any(axis=1))
    if rows.size == 0:  # the sum overflowed: huge but finite values
        return 0, None
    return int(bad.sum()), int(rows[0])


def check_finite(split, x, y):
    """Raise :class:`DataError` if the ``split``'s inputs or real targets hold NaN or ±inf."""
    for what, a in (("inputs", x), ("targets", y)):
        count, first = _non_finite(a)
        if count:
            raise DataError(
                f"the {split} {what} hold {count} non-finite value(s) (NaN or ±inf), the first "
                f"in example {first}: a data error, not divergence — clean or impute the data"
            )


def _classes(ids):
    ids = [int(i) for i in ids]
    shown = ", ".join(map(str, ids[:10]))
    return shown + (f" … ({len(ids)} in all)" if len(ids) > 10 else "")


def label_warnings(y_train, y_test, n_classes):
    """The warnings (one line each) for integer labels against a model of ``n_classes``."""
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if n_classes is None or y_train.ndim != 1 or not np.issubdtype(y_train.dtype, np.integer):
        return []
    k = int(n_classes)
    train = np.bincount(y_train[(y_train >= 0) & (y_train < k)], minlength=k)[:k] > 0
    test = np.zeros(k, bool)
    if y_test.ndim == 1 and np.issubdtype(y_test.dtype, np.integer):
        test = np.bincount(y_test[(y_test >= 0) & (y_test < k)], minlength=k)[:k] > 0
    out = []
    absent = np.flatnonzero(~train & ~test)
    if absent.size:
        out.append(
            f"the labels are not the class indices 0 … {k - 1}: class(es) {_classes(absent)} "
            f"never occur (labels must be 0 … K−1 for K outputs, not codes)"
        )
    test_only = np.flatnonzero(~train & test)
    if test_only.size:
        out.append(
            f"class(es) {_classes(test_only)} have no training example (test split only): the "
            f"model cannot learn to predict them"
        )
    return out


def warn_labels(model, y_train, y_test):
    """Issue :func:`label_warnings` for ``model`` (its ``n_classes``, if it has one)."""
    for message in label_warnings(y_train, y_test, getattr(model, "n_classes", None)):
        warnings.warn(message, DataWarning, stacklevel=3)
