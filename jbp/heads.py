"""Loss heads: the output activation, the cost, BP1, the mask and the 1/m, in one place.

A head takes the network's *logits* Z (the last layer's pre-activation, shape (m, n_out))
and targets, and gives the batch loss and the first delta of the backward pass::

    C = Σᵢ maskᵢ·Cᵢ / Σᵢ maskᵢ                  (the mean over real examples)
    dZᴸ = ∂C/∂Zᴸ = maskᵢ/Σmask · δᴸᵢ            (BP1, already scaled: layers never see 1/m)

with the fused deltas where the textbook has them, which never form σ'(z)::

    softmax + cross-entropy:         δᴸ = softmax(Z)·Σⱼtⱼ − T   (= A − Y for one-hot Y)
    sigmoid + binary cross-entropy:  δᴸ = σ(Z) − T
    squared error after g:           δᴸ = (A − T) ⊙ g'(Z)      (g = identity, sigmoid, softmax)

Heads also turn integer labels into targets (one-hot rows, or one 0/1 column for a single
output unit), give the prediction ``A = g(Z)``, and the accuracy. The cross-entropies are
computed from the logits (log-sum-exp, softplus), so a saturated output never takes log(0).

Reference: Nielsen, ch. 3 ("the cross-entropy cost function"); the seed's e = ½Σe².
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jbp import activations, losses
from jbp.axes import current_batch_axis


def check_labels(y, n_out):
    """Raise ``ValueError`` when concrete integer labels fall outside the head's classes."""
    if isinstance(y, jax.core.Tracer) or jnp.size(y) == 0:
        return
    n_classes = 2 if n_out == 1 else n_out
    lo, hi = int(np.min(np.asarray(y))), int(np.max(np.asarray(y)))
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"labels must be in [0, {n_classes - 1}] for {n_out} output unit(s), got labels in "
            f"[{lo}, {hi}]"
        )


def to_targets(y, m, n_out, dtype):
    """Dense targets T of shape (m, n_out) from labels (m,) or targets (m, n_out).

    Integer labels become one-hot rows (or a single 0/1 column for one output unit).
    Label ranges are checked whenever ``y`` is concrete (not inside ``jit``).
    """
    shape = jnp.shape(y)
    if shape not in ((m,), (m, n_out)):
        raise ValueError(
            f"y must be integer labels of shape ({m},) or targets of shape ({m}, {n_out}), "
            f"got {shape}"
        )
    integer = jnp.issubdtype(jnp.result_type(y), jnp.integer)
    if len(shape) == 1 and integer:
        check_labels(y, n_out)
        if n_out == 1:
            return jnp.asarray(y, dtype)[:, None]
        return jax.nn.one_hot(y, n_out, dtype=dtype)
    if len(shape) == 1:
        if n_out != 1:
            raise ValueError(
                f"real-valued y of shape {shape} needs 1 output unit, the network has {n_out}; "
                f"pass integer labels or targets of shape ({m}, {n_out})"
            )
        return jnp.asarray(y, dtype)[:, None]
    return jnp.asarray(y, dtype)


def reduce(per, mask):
    """``(C, scale)``: the masked mean of per-example values and the weight of each row.

    ``scale`` has shape (m,): 1/m for every row without a mask, maskᵢ/Σmask with one.

    Inside a training step whose batch is split over devices (``jbp.layers.batch_axis``), the
    count Σmask is the whole batch's (``lax.psum``): each device returns its *share* of the
    global mean, and the shares (and their gradients) add up over the devices. That keeps
    every layer's backward the VJP of one global loss — what BatchNorm's global statistics
    need, since their gradients mix the devices' rows.
    """
    m = per.shape[0]
    axis = current_batch_axis()
    if mask is None and axis is None:
        return jnp.mean(per), jnp.full((m,), 1.0 / m, per.dtype)
    mask = jnp.ones((m,), per.dtype) if mask is None else jnp.asarray(mask, per.dtype)
    count = jnp.sum(mask) if axis is None else jax.lax.psum(jnp.sum(mask), axis)
    scale = mask / jnp.maximum(count, 1)
    return jnp.sum(per * scale), scale


@dataclasses.dataclass(frozen=True)
class Head:
    """A cost on the logits with its output activation: the base of the three heads.

    Args:
      output: the output activation g (``"identity" | "sigmoid" | "softmax"``).
      cost: the per-example cost (a name in :data:`jbp.losses.COSTS`).
    """

    output: str
    cost: str

    def __post_init__(self):
        if self.output not in activations.OUTPUTS:
            raise ValueError(
                f"unknown output {self.output!r}; expected one of {', '.join(activations.OUTPUTS)}"
            )
        if self.cost not in losses.COSTS:
            raise ValueError(
                f"unknown cost {self.cost!r}; expected one of {', '.join(losses.COSTS)}"
            )
        fits = losses.COSTS[self.cost][3]
        if self.output not in fits:
            raise ValueError(
                f"cost {self.cost!r} does not fit output {self.output!r}: it needs output "
                f"{' or '.join(repr(f) for f in fits)}"
            )

    def check_out_shape(self, out_shape):
        """Raise ``ValueError`` unless the logits are (n_out,) with n_out fitting the head."""
        if len(out_shape) != 1:
            raise ValueError(
                f"a {self.cost} head needs logits of shape (batch, n_out), the network gives "
                f"(batch, {', '.join(map(str, out_shape))})"
            )
        if self.output == "softmax" and out_shape[0] < 2:
            raise ValueError(f"a softmax output needs at least 2 units, got {out_shape[0]}")

    def predict(self, z):
        """A = g(Z), the network's output."""
        return activations.ACTIVATIONS[self.output][0](z)

    def targets(self, y, z):
        return to_targets(y, z.shape[0], z.shape[-1], z.dtype)

    def per_example(self, z, y):
        """Cᵢ for every row (the cost summed over output units)."""
        a = self.predict(z)
        return losses.COSTS[self.cost][0](z, a, self.targets(y, z))

    def loss(self, z, y, mask=None):
        """C = Σᵢ maskᵢ·Cᵢ / Σmask (the plain mean without a mask)."""
        return reduce(self.per_example(z, y), mask)[0]

    def delta(self, z, a, t):
        """BP1 for one example per row, before the 1/m: δᴸ = ∂Cᵢ/∂Zᴸᵢ."""
        cost, cost_bwd, fused, _ = losses.COSTS[self.cost]
        if self.output in fused:  # fused: A − Y
            return fused[self.output](z, a, t)
        return activations.ACTIVATIONS[self.output][1](cost_bwd(z, a, t), z, a)

    def loss_and_delta(self, z, y, mask=None):
        """``(C, dZᴸ)`` with dZᴸ = ∂C/∂Zᴸ: BP1 times maskᵢ/Σmask (the plain 1/m without one)."""
        a = self.predict(z)
        t = self.targets(y, z)
        per = losses.COSTS[self.cost][0](z, a, t)
        loss, scale = reduce(per, mask)
        return loss, self.delta(z, a, t) * scale[:, None]

    def correct(self, z, y):
        """1 where the predicted class matches the label (argmax, or the 0.5 cut for 1 unit)."""
        a = self.predict(z)
        t = self.targets(y, z)
        if a.shape[-1] == 1:
            return ((a[:, 0] > 0.5) == (t[:, 0] > 0.5)).astype(a.dtype)
        return (jnp.argmax(a, -1) == jnp.argmax(t, -1)).astype(a.dtype)

    def accuracy(self, z, y, mask=None):
        """The fraction of (real) examples classified correctly."""
        return reduce(self.correct(z, y), mask)[0]

    def config(self):
        return {"output": self.output, "cost": self.cost}


def SoftmaxCrossEntropy():  # noqa: N802 - reads as a class, like the other heads
    """Softmax output with the cross-entropy cost; BP1 fused: dZᴸ = softmax(Z) − Y."""
    return Head("softmax", "cross_entropy")


def SigmoidBinaryCrossEntropy():  # noqa: N802
    """Sigmoid outputs with the binary cross-entropy; BP1 fused: dZᴸ = σ(Z) − T."""
    return Head("sigmoid", "binary_cross_entropy")


def SquaredError(output="identity"):  # noqa: N802
    """½Σⱼ(tⱼ − aⱼ)² on A = g(Z); BP1: dZᴸ = (A − T) ⊙ g'(Z)."""
    return Head(output, "squared_error")


#: name -> head constructor, for ``loss=`` arguments and the command line
HEADS = {
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "sigmoid_binary_cross_entropy": SigmoidBinaryCrossEntropy,
    "squared_error": SquaredError,
}


def get(head):
    """A head from a :class:`Head` or a name in :data:`HEADS`."""
    if isinstance(head, Head):
        return head
    if head in HEADS:
        return HEADS[head]()
    raise ValueError(
        f"unknown loss head {head!r}; expected a jbp.heads.Head or one of {', '.join(HEADS)}"
    )
