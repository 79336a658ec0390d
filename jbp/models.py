"""Ready-made models built from jbp layers (every backward hand-written and checked).

``cnn`` is the small convolutional network of ``jbp train --model cnn``::

    conv 3×3·32 – relu – max-pool 2×2 – conv 3×3·64 – relu – max-pool 2×2 –
    flatten – dense 128 – relu – [dropout] – dense n_classes        (softmax cross-entropy)

with an optional BatchNorm after each convolution. On 28×28×1 images it has 421,642
parameters (without BatchNorm). Reference: the Keras / flax MNIST examples' CNN.
"""

from jbp import combinators, conv, heads, layers, model, pool


def cnn(
    in_shape=(28, 28, 1),
    n_classes=10,
    *,
    batchnorm=False,
    dropout=0.25,
    width=(32, 64, 128),
    algorithm="auto",
):
    """The small CNN above as a :class:`jbp.Network`.

    Args:
      in_shape: one image, NHWC without the batch axis, e.g. ``(28, 28, 1)``.
      n_classes: outputs (softmax cross-entropy head).
      batchnorm: a :class:`jbp.norms.BatchNorm` after each convolution (before its relu).
      dropout: drop probability before the last dense layer (0 for none).
      width: the two convolutions' channels and the hidden dense width.
      algorithm: the convolutions' formulation (:class:`jbp.conv.Conv`'s ``algorithm``).
    """
    c1, c2, hidden = width
    blocks = []
    for c in (c1, c2):
        blocks.append(
            conv.Conv(c, (3, 3), padding="SAME", use_bias=not batchnorm, algorithm=algorithm)
        )
        if batchnorm:
            from jbp import norms

            blocks.append(norms.BatchNorm())
        blocks += [layers.Activation("relu"), pool.MaxPool((2, 2))]
    blocks += [layers.Flatten(), layers.Dense(hidden, "relu")]
    if dropout:
        blocks.append(layers.Dropout(dropout))
    blocks.append(layers.Dense(n_classes))
    return model.Network(combinators.Sequential(*blocks), heads.SoftmaxCrossEntropy(), in_shape)
