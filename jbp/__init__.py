"""jbp — JAX backprop: hand-written back-propagation and textbook optimizers, verified.

Public names: ``MLP``; layers with hand-written backward passes (``Dense``, ``Activation``,
``Flatten``, ``layer``) and combinators (``Sequential``, ``Residual``, ``FanOut``,
``Parallel``, ``FanInSum``, ``FanInConcat``, ``Autodiff``); ``Network`` (layers + a loss
head, :mod:`jbp.heads`); ``check_layer`` / ``check_model``; ``per_example_grads``,
``gradcheck``, ``ewma``; ``fit``, ``TrainState``; and the modules ``optim``, ``schedules``,
``data``, ``config`` (a run as a value) and ``recipe`` (``build(config)``), ``adapters`` (plain JAX functions and Flax NNX modules as models).
"""

from jbp import (
    activations,
    adapters,
    check,
    checkpoint,
    combinators,
    config,
    conv,
    data,
    embedding,
    epoch,
    heads,
    layers,
    losses,
    model,
    models,
    norms,
    optim,
    parallel,
    recipe,
    schedules,
)
from jbp.averages import ewma
from jbp.check import check_layer, check_model
from jbp.combinators import (
    Autodiff,
    FanInConcat,
    FanInSum,
    FanOut,
    Identity,
    Parallel,
    Residual,
    Sequential,
)
from jbp.conv import AvgPool, Conv, GlobalAvgPool, MaxPool, Reshape
from jbp.embedding import Embedding
from jbp.gradient_check import gradcheck
from jbp.layers import Activation, Dense, Dropout, Flatten, Layer, layer
from jbp.mlp import MLP
from jbp.model import Network, per_example_grads
from jbp.norms import BatchNorm, LayerNorm
from jbp.train import DivergenceError, TrainState, fit, params_sha256

__version__ = "0.1.0"
__all__ = [
    "MLP",
    "Activation",
    "AvgPool",
    "Conv",
    "GlobalAvgPool",
    "MaxPool",
    "Reshape",
    "BatchNorm",
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Autodiff",
    "Dense",
    "FanInConcat",
    "FanInSum",
    "FanOut",
    "Flatten",
    "Identity",
    "Layer",
    "Network",
    "Parallel",
    "Residual",
    "Sequential",
    "check_layer",
    "check_model",
    "combinators",
    "conv",
    "embedding",
    "epoch",
    "heads",
    "layer",
    "model",
    "models",
    "norms",
    "DivergenceError",
    "TrainState",
    "activations",
    "adapters",
    "check",
    "checkpoint",
    "config",
    "recipe",
    "data",
    "ewma",
    "fit",
    "gradcheck",
    "layers",
    "losses",
    "optim",
    "parallel",
    "params_sha256",
    "per_example_grads",
    "schedules",
]
