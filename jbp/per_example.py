"""Per-example gradients of any jbp model: ``vmap`` of its one-example backward.

``per_example_grads(model, params, x, y)`` gives every gradient leaf a leading axis of the
batch size m; their mean over it is the batch gradient (the loss is a mean over examples).
``jbp.fit(..., grad_norms=True)`` reports their norms per epoch. Reference: the per-example
gradient trick with ``jax.vmap`` (JAX docs, "Per-example gradients").
"""

import jax
import jax.numpy as jnp

from jbp.axes import split_axis


def per_example_grads(model, params, x, y, *, state=None, key=None):
    """Per-example gradients: ``vmap`` of the single-example manual backward.

    Every leaf gets a leading batch axis of size m; their mean over that axis is the
    batch gradient ``model.loss_and_grad(params, x, y)[1]``. A stochastic model needs
    ``key=``; each example gets the draws it gets in the batch with that key: the ``vmap``
    runs inside :func:`jbp.layers.split_axis`, so Dropout draws the batch's masks and
    example i keeps row i (with the batch split over devices as well, its row of the whole
    batch), and other stochastic layers get a key per example. A stochastic model that does
    not draw through jbp's layers (a Flax NNX module with RNG streams, a function model)
    gets ``fold_in(key, i)`` for example i: draws of their own, independent across examples,
    so their mean is the batch gradient in expectation, not draw for draw. A model whose
    layers couple the examples of a batch (BatchNorm) has no per-example gradient and is
    refused.
    """
    if getattr(model, "batch_coupled", False):
        raise ValueError(
            "per-example gradients need a model that does not couple examples; this one has "
            "a batch-coupled layer (batch statistics)"
        )
    if hasattr(model, "check_x"):
        model.check_x(x, "x")
    kw = {} if state is None else {"state": state}
    # jbp's layers draw per example through split_axis from the batch's key; any other
    # stochastic model would see one key in every example, so the same draws: fold it
    own_keys = key is not None and not getattr(model, "whole_batch_draws", False)

    def one(xi, yi, i):
        k = jax.random.fold_in(key, i) if own_keys else key
        extra = {} if k is None else {"key": k}
        return model.loss_and_grad(params, xi[None], yi[None], **kw, **extra)[1]

    with split_axis(EXAMPLES):
        return jax.vmap(one, axis_name=EXAMPLES)(x, y, jnp.arange(x.shape[0]))


#: the ``vmap`` axis of :func:`per_example_grads` (a block of one row per example)
EXAMPLES = "jbp_examples"
