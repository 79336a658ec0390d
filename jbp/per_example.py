"""Per-example gradients of any jbp model: ``vmap`` of its one-example backward.

``per_example_grads(model, params, x, y)`` gives every gradient leaf a leading axis of the
batch size m; their mean over it is the batch gradient (the loss is a mean over examples).
``jbp.fit(..., grad_norms=True)`` reports their norms per epoch. Reference: the per-example
gradient trick with ``jax.vmap`` (JAX docs, "Per-example gradients").
"""

import jax

from jbp.axes import split_axis


def per_example_grads(model, params, x, y, *, state=None, key=None):
    """Per-example gradients: ``vmap`` of the single-example manual backward.

    Every leaf gets a leading batch axis of size m; their mean over that axis is the
    batch gradient ``model.loss_and_grad(params, x, y)[1]``. A stochastic model needs
    ``key=``; each example gets the draws it gets in the batch with that key: the ``vmap``
    runs inside :func:`jbp.layers.split_axis`, so Dropout draws the batch's masks and
    example i keeps row i (with the batch split over devices as well, its row of the whole
    batch), and other stochastic layers get a key per example. A model whose layers couple
    the examples of a batch (BatchNorm) has no per-example gradient and is refused.
    """
    if getattr(model, "batch_coupled", False):
        raise ValueError(
            "per-example gradients need a model that does not couple examples; this one has "
            "a batch-coupled layer (batch statistics)"
        )
    if hasattr(model, "check_x"):
        model.check_x(x, "x")
    kw = {} if state is None else {"state": state}
    if key is not None:  # stochastic layers: the batch's key; each example its row's draws
        kw["key"] = key

    def one(xi, yi):
        return model.loss_and_grad(params, xi[None], yi[None], **kw)[1]

    with split_axis(EXAMPLES):
        return jax.vmap(one, axis_name=EXAMPLES)(x, y)


#: the ``vmap`` axis of :func:`per_example_grads` (a block of one row per example)
EXAMPLES = "jbp_examples"
