"""Test configuration: float64 everywhere, 4 simulated CPU devices, set before JAX starts.

The ``jbp train`` processes the tests start keep their compiled programs in one cache for
the session (not the user's own cache folder), which the runs share as users' runs do. A test
that runs ``jbp.cli.main`` in this process turns JAX's persistent cache on here too; it is
turned off again after that test, so the rest of the suite does not write every program it
compiles to disk (which made the tests after it about 40 % slower).

The suite compiles about 5,700 programs, most of them small, and in the unit tests XLA's CPU
compiler took about 80 % of the time. So unless ``XLA_FLAGS`` is set, the tests (and the ``jbp``
processes they start, which inherit it) compile with LLVM's optimisation level 0, XLA's classic
loop emitters instead of its MLIR fusion emitters, and each program's code generated in one
piece rather than split for parallel compilation: 2–3 times faster to compile (``x + 1``: 23 →
10 ms), the whole suite 1003 → 440–540 s in one process on the 2-core machine (``scripts/test``
then runs it in two pytest-xdist workers, one file per worker at a time: 281–364 s). Results
agree with the default compiler's to rounding, not bit for bit (elementwise functions are
emitted differently); the bit-exactness tests compare runs made with one configuration.
``XLA_FLAGS= scripts/test`` runs the suite with XLA's defaults, as users' programs are compiled;
so does an XLA that no longer knows these flags (checked once, in a child process, as it would
abort on them).
"""

import os
import subprocess
import sys
import tempfile

import pytest

QUICK_COMPILE = (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_parallel_codegen_split_count=1"
)


def _quick_compile_flags():
    """``QUICK_COMPILE`` if this XLA knows those flags (it aborts on an unknown one), else ""."""
    env = dict(os.environ, XLA_FLAGS=QUICK_COMPILE, JAX_PLATFORMS="cpu")
    probe = [sys.executable, "-c", "import jax; jax.numpy.ones(2).block_until_ready()"]
    if subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode == 0:
        return QUICK_COMPILE
    print(
        f"conftest: this XLA refuses {QUICK_COMPILE}; compiling with its defaults", file=sys.stderr
    )
    return ""


if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = _quick_compile_flags()
os.environ.setdefault(
    "JBP_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), f"jbp-test-cache-{os.getuid()}")
)
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture(autouse=True)
def _persistent_cache_off_after_each_test():
    yield
    if jax.config.jax_compilation_cache_dir is not None:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
