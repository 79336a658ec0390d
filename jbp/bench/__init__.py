"""``jbp bench``: jbp's training throughput side by side with the baselines, in one run.

Every contender — jbp with its hand-written backward (``jbp-manual``) or ``jax.grad``
(``jbp-autodiff``), hand-rolled ``jax.value_and_grad`` + optax (in ``lax.scan`` or a Python
loop), Flax NNX, PyTorch eager and NumPy — trains the same network with the same optimizer,
batch size and data from the same fresh parameters; the result gives examples/s, achieved
GFLOP/s against the machine's measured matmul peak, and the first epoch's wall time.
Optionally, time to a Fashion-MNIST test accuracy with jbp's fastest recipe and the
baselines' recipe.

Public names: :data:`WORKLOADS` (name -> workload), :data:`ALL_CONTENDERS`, :func:`run` (the
JSON-ready result), :func:`table` and :func:`save` (text; ``bench.json`` + ``bench.png``),
:func:`time_to_accuracy` with :data:`TTA_RECIPE` / :data:`BASELINE_CONFIG` (run
configurations, :class:`jbp.config.RunConfig`), and the command line: :func:`add_args` (the
flags) and :func:`main` (``jbp bench`` with parsed flags).

Modules: :mod:`~jbp.bench.runner` (timing, workloads), :mod:`~jbp.bench.dense` and
:mod:`~jbp.bench.eager` (the dense workloads' contenders), :mod:`~jbp.bench.cnn` (the CNN
workload), :mod:`~jbp.bench.tta` (time to accuracy), :mod:`~jbp.bench.report`,
:mod:`~jbp.bench.command`. Importing this package does not import PyTorch or Flax: each is
imported when a contender that uses it is built. ``import jbp`` does not import this package.
"""

from jbp.bench.command import add_args, main
from jbp.bench.report import save, table
from jbp.bench.runner import ALL_CONTENDERS, WORKLOADS, bench_workload, run
from jbp.bench.tta import BASELINE_CONFIG, BASELINE_RECIPE, TTA_RECIPE, time_to_accuracy

__all__ = [
    "ALL_CONTENDERS",
    "BASELINE_CONFIG",
    "BASELINE_RECIPE",
    "TTA_RECIPE",
    "WORKLOADS",
    "add_args",
    "bench_workload",
    "main",
    "run",
    "save",
    "table",
    "time_to_accuracy",
]
