"""When training stops by itself: divergence (:class:`DivergenceError`) and early stopping.

Divergence is never silent, in either form:

* **non-finite** — a NaN or ±inf loss or gradient anywhere in an epoch (found by the epoch
  program's per-step probe and its end-of-epoch check of every leaf);
* **blow-up** — an epoch whose mean training loss exceeds ``divergence_threshold`` times the
  *initial loss* (:func:`initial_loss`). A loss can grow a billionfold and stay finite: plain
  SGD with ``lr=1e9`` on digits reaches 5e9 in its first epoch (2.4 at the start), with every
  value finite.

Either way the epoch is discarded whole, and the error carries the last good state.

:class:`EarlyStopping` keeps the best epoch's parameters; its best-so-far (:class:`Best`) is
what a checkpoint stores beside the state, so that a run stopped and resumed with
``--patience`` stops at the same epoch with the same parameters as one never stopped.
"""

import math
from typing import NamedTuple

import jax

from jbp.util import real

#: The default ``divergence_threshold``: 1000 × the initial loss. Every preset run stays at
#: or below its initial loss (measured, max train loss ÷ initial loss: digits 0.90, moons
#: 0.99, the CNN on digits 0.68, fashion-mnist 0.46 on 4 000 examples; even SGD at lr 10 on
#: digits, far too large, 1.18), so three orders of magnitude of margin never stop a run
#: that learns. A loss that large is no longer learning: for cross-entropy it is ~2 300 nats
#: on 10 classes. An exploding step size crosses it in its first epoch (SGD on digits: lr
#: 1e3 → 2 200×, lr 1e9 → 2e9×).
DIVERGENCE_THRESHOLD = 1e3


class DivergenceError(RuntimeError):
    """Training diverged: a non-finite loss or gradient, or a loss that blew up.

    Attributes: ``epoch`` (the epoch discarded), ``step`` (the optimizer step overall: the
    first bad one, or the epoch's last for a blow-up), ``state`` (the last good state: the
    end of epoch ``epoch - 1``), ``kind`` (``"non-finite"`` or ``"blow-up"``), and for a
    blow-up ``loss`` (the epoch's train loss), ``reference`` (the initial loss) and
    ``threshold``.
    """

    def __init__(self, epoch, step, state, *, loss=None, reference=None, threshold=None):
        self.epoch, self.step, self.state = epoch, step, state  # state: the last good epoch's
        self.loss, self.reference, self.threshold = loss, reference, threshold
        self.kind = "non-finite" if loss is None else "blow-up"
        if loss is None:
            in_epoch = step - int(state.step)
            what = (
                f"non-finite loss or gradient at epoch {epoch}, step {in_epoch} of the epoch "
                f"(optimizer step {step} overall)"
            )
            kept = "are kept and nothing non-finite is saved"
        else:
            what = (
                f"the train loss of epoch {epoch} is {loss:.4g}, more than {threshold:g} × the "
                f"initial loss {reference:.4g} (divergence_threshold)"
            )
            kept = "are kept"
        super().__init__(
            f"training diverged: {what}; the parameters of epoch {epoch - 1} {kept} — try a "
            f"smaller learning rate"
        )


def check_threshold(threshold):
    """``threshold`` if it is ``None`` (off) or a finite number ≥ 1; else ``ValueError``."""
    if threshold is None:
        return None
    return real(
        "divergence_threshold",
        threshold,
        low=1,
        message=f"divergence_threshold must be a finite number >= 1 (a multiple of the initial "
        f"loss) or None (off), got divergence_threshold={threshold!r}",
    )


def initial_loss(model, state, x_test, y_test):
    """The loss a run starts from: the test loss of ``state``'s parameters, as a float.

    Parameters that have seen no example do as well on the test set as on the training set,
    so this estimates the initial training loss without a pass over the training set (the
    test set is what every epoch evaluates already: it fits in memory).
    """
    # One compiled program (kept by the compilation cache), not one per operation: evaluated
    # op by op, the dozen small programs cost about 0.4 s of a run's start-up.
    loss, _ = jax.jit(model.evaluate)(state.params, state.model_state, x_test, y_test)
    return float(loss)


def check_blow_up(epoch, step, state, train_loss, reference, threshold):
    """Raise :class:`DivergenceError` if ``train_loss`` exceeds ``threshold × reference``.

    Off when ``threshold`` is ``None`` or the reference is not a positive finite number (a
    loss that can be negative, e.g. a Gaussian likelihood, has no meaningful multiple).
    """
    if threshold is None or reference is None or not (0 < reference < math.inf):
        return
    if train_loss > threshold * reference:
        raise DivergenceError(
            epoch, step, state, loss=train_loss, reference=reference, threshold=threshold
        )


class Best(NamedTuple):
    """Early stopping's best-so-far: what a checkpoint keeps beside the state."""

    loss: float  # the best test loss (inf: no epoch yet)
    epoch: int  # its epoch (0: none yet)
    params: object
    model_state: object


class EarlyStopping:
    """Stop when the test loss has not improved for ``patience`` epochs; keep the best.

    ``observe(state, record) -> stop`` records an epoch; when it says stop, the record has
    gained ``early_stopped`` and ``best_epoch`` and :meth:`best_state` gives the state with
    the best epoch's parameters and model state. ``update(state, record) -> (state,
    stopped)`` does both. ``patience=None``: never stops, keeps nothing.

    Args:
      patience: epochs without improvement before stopping (``None``: off).
      state: the state training starts from (the best until an epoch is better).
      best: a :class:`Best` to continue from (a resumed run's, from its checkpoint).
    """

    def __init__(self, patience, state=None, *, best=None):
        self.patience = patience
        if best is not None:
            loss, epoch, params, model_state = best
            self.best_loss, self.best_epoch = float(loss), int(epoch)
            self.best_params, self.best_model_state = params, model_state
        else:
            self.best_loss, self.best_epoch = math.inf, 0
            self.best_params = state.params if state is not None else None
            self.best_model_state = state.model_state if state is not None else None

    def start(self, state):
        """Take ``state`` as the best so far if nothing better is known yet."""
        if self.best_params is None:
            self.best_params, self.best_model_state = state.params, state.model_state

    def done(self, epoch):
        """True if a run at ``epoch`` has already gone ``patience`` epochs without improving."""
        return (
            self.patience is not None
            and self.best_epoch > 0
            and (epoch - self.best_epoch >= self.patience)
        )

    def observe(self, state, record):
        if self.patience is None:
            return False
        if record["test_loss"] < self.best_loss:
            self.best_loss, self.best_epoch = record["test_loss"], record["epoch"]
            self.best_params, self.best_model_state = state.params, state.model_state
        elif record["epoch"] - self.best_epoch >= self.patience:
            record["early_stopped"], record["best_epoch"] = True, self.best_epoch
            return True
        return False

    def best_state(self, state):
        return state._replace(params=self.best_params, model_state=self.best_model_state)

    def update(self, state, record):
        stopped = self.observe(state, record)
        return (self.best_state(state) if stopped else state), stopped

    def best(self):
        """The best so far as a :class:`Best` (``None`` with ``patience=None``)."""
        if self.patience is None or self.best_params is None:
            return None
        return Best(self.best_loss, self.best_epoch, self.best_params, self.best_model_state)
