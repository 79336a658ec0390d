"""JAX's persistent compilation cache, on by default for ``jbp train`` and ``jbp bench``.

Every run of a script compiles its programs again: on the digits recipe the first epoch takes
about a second, later ones a few milliseconds. With the cache, a second run loads the
compiled epoch program from disk instead (JAX's persistent compilation cache: one file per
program, keyed by the program, the jaxlib version, the devices and the compile options, so a
stale entry is never used for another program).

Where: ``--compile-cache DIR`` on the command line, else the environment variable
``JBP_COMPILATION_CACHE``, else JAX's own ``JAX_COMPILATION_CACHE_DIR``, else the per-user
cache location of the platform (``$XDG_CACHE_HOME/jbp/jax`` or ``~/.cache/jbp/jax`` on Linux,
``~/Library/Caches/jbp/jax`` on macOS, ``%LOCALAPPDATA%\\jbp\\cache\\jax`` on Windows).
``off`` (or ``0``, ``none``, ``false``) disables it.

Safe to share: several runs may use one cache at once. With a size limit set (2 GiB here),
JAX's cache takes a file lock around every read and write and evicts the least recently used
entries, so no run reads a half-written entry. A damaged entry is never fatal: JAX warns,
compiles the program afresh, and the run goes on (this module folds that warning into one
line). A cache folder that cannot be created (a read-only home) turns the cache off with one
line on standard error.

From Python, ``jbp.fit`` does not touch global JAX configuration by itself; opt in with::

    import jbp.compile_cache
    jbp.compile_cache.enable()            # or enable("/path/to/cache"); before compiling

Reference: JAX docs, "Persistent compilation cache".
"""

import os
import sys
import warnings
from pathlib import Path

ENV = "JBP_COMPILATION_CACHE"
OFF = ("off", "0", "none", "false", "no", "")
MAX_BYTES = 2 * 1024**3  # LRU eviction above this; also what makes JAX lock the cache files


def default_dir() -> Path:
    """The platform's per-user cache location for jbp's compiled programs."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "jbp" / "cache" / "jax"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "jbp" / "jax"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jbp" / "jax"


def resolve(choice=None):
    """The cache folder to use (``None``: disabled) from a flag value and the environment.

    An empty environment variable counts as unset (as JAX reads its own); an empty flag
    value, like ``off``, disables the cache.
    """
    env = [os.environ.get(name, "").strip() for name in (ENV, "JAX_COMPILATION_CACHE_DIR")]
    for value in (choice, *[v or None for v in env]):
        if value is not None:
            return None if str(value).strip().lower() in OFF else Path(value).expanduser()
    return default_dir()


def enable(path=None, *, quiet=False):
    """Turn JAX's persistent compilation cache on at ``path`` (default: :func:`resolve`).

    Call before the first compilation of the process. Every program is cached, however
    quick it was to compile (JAX's default keeps only those over a second). Returns the
    folder, or ``None`` when disabled or when the folder cannot be created (said on standard
    error unless ``quiet``).
    """
    import jax

    folder = resolve(path)
    if folder is None:
        return _disable(jax)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable")
    except OSError as e:
        if not quiet:
            print(
                f"jbp: compilation cache {folder}: {e.strerror or e}; running without it",
                file=sys.stderr,
            )
        return _disable(jax)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _fold_warnings(folder)
    return folder


def _disable(jax):
    """Off, also when JAX's own ``JAX_COMPILATION_CACHE_DIR`` would turn its cache on."""
    jax.config.update("jax_enable_compilation_cache", False)
    return None


_DAMAGED = "Error reading persistent compilation cache entry"
_reported = []  # the folders whose damaged entries this process has reported


def _fold_warnings(folder):
    """JAX warns once per damaged entry, at length; say it once per run, in one line.

    JAX never rewrites an entry it could not read, so the line says how to clear it.
    """
    warnings.filterwarnings("once", message=_DAMAGED)
    previous = warnings.showwarning
    if getattr(previous, "_jbp", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if text.startswith(_DAMAGED):
            if folder not in _reported:
                _reported.append(folder)
                print(
                    "jbp: a damaged compilation cache entry was ignored (compiled afresh; "
                    f"delete {folder} to clear it): "
                    + text.split(": ", 1)[-1].splitlines()[0][:160],
                    file=sys.stderr,
                )
            return
        previous(message, category, filename, lineno, file, line)

    show._jbp = True
    warnings.showwarning = show


class HitCounter:
    """Counts persistent-cache hits and misses (writes) while active: ``with HitCounter() as c``.

    Uses JAX's monitoring events (``/jax/compilation_cache/cache_hits`` and ``…/cache_misses``);
    for tests and ``jbp bench``'s start-up report.
    """

    HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"

    def __init__(self):
        self.hits = self.misses = 0
        self._on = False

    def _listen(self, event, **kwargs):
        if self._on:
            self.hits += event == self.HIT
            self.misses += event == self.MISS

    def __enter__(self):
        from jax import monitoring

        self._on = True
        if not getattr(self, "_registered", False):
            monitoring.register_event_listener(self._listen)
            self._registered = True
        return self

    def __exit__(self, *exc):
        self._on = False
