"""jbp — JAX backprop: hand-written back-propagation and textbook optimizers, verified.

Public names (see DESIGN.md): ``MLP``, ``per_example_grads``, ``gradcheck``, ``ewma``,
``fit``, ``TrainState``, and the modules ``optim``, ``schedules``, ``data``.
"""

from jbp import (
    activations,
    checkpoint,
    data,
    ewma,
    gradcheck,
    layers,
    losses,
    optim,
    parallel,
    schedules,
)
from jbp.mlp import MLP, per_example_grads
from jbp.train import DivergenceError, TrainState, fit, params_sha256

__version__ = "0.1.0"
__all__ = [
    "MLP",
    "DivergenceError",
    "TrainState",
    "activations",
    "checkpoint",
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
