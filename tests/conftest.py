"""Test configuration: float64 everywhere, 4 simulated CPU devices, set before JAX starts.

The ``jbp train`` processes the tests start keep their compiled programs in one cache for
the session (not the user's own cache folder), which the runs share as users' runs do.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "")
os.environ.setdefault(
    "JBP_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), f"jbp-test-cache-{os.getuid()}")
)
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
