"""Test configuration: float64 everywhere, 4 simulated CPU devices, set before JAX starts.

The ``jbp train`` processes the tests start keep their compiled programs in one cache for
the session (not the user's own cache folder), which the runs share as users' runs do. A test
that runs ``jbp.cli.main`` in this process turns JAX's persistent cache on here too; it is
turned off again after that test, so the rest of the suite does not write every program it
compiles to disk (which made the tests after it about 40 % slower).
"""

import os
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "")
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
