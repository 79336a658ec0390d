"""orbax-checkpoint, quietly: lazy import, chatter filtered, failed reads' and saves' echoes
dropped.

orbax logs renames and read-only notices through absl at INFO/WARNING, and after a failed
read its other pending reads die later on background threads, where Python prints their
tracebacks ("Exception ignored …") long after jbp reported the error in one line. A failed
save (disk full) is logged once more by each of orbax's background threads, as an ERROR with
the whole traceback, while the same error reaches jbp and is reported in one line; its other
pending writes then die on the closed event loop, like a failed read's. These
helpers keep jbp's one line the only output, without hiding anything else: other errors still
log, other unraisable exceptions still print.
"""

import contextlib
import logging
import os
import sys


class _DropOrbaxChatter(logging.Filter):
    """Drop orbax's INFO/WARNING records (renames, 'directory is read only' …), keep errors."""

    def filter(self, record):
        return record.levelno >= logging.ERROR or f"{os.sep}orbax{os.sep}" not in record.pathname


@contextlib.contextmanager
def quiet():
    """orbax logs through absl; silence its chatter only while jbp is calling it."""
    logger, f = logging.getLogger("absl"), _DropOrbaxChatter()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def _is_orbax_aftermath(unraisable):
    """The echo of a failed read: orbax's pending reads finishing after its event loop closed."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
        return True
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def silence_failed_read_aftermath():
    """After a read fails, orbax's other pending reads die later, on other threads, and Python
    prints their tracebacks ("Exception ignored …", "Event loop is closed") long after the
    error was caught and reported. Drop exactly those; every other unraisable still prints."""
    previous = sys.unraisablehook
    if getattr(previous, "_jbp", False):
        return

    def hook(unraisable):
        if not _is_orbax_aftermath(unraisable):
            previous(unraisable)

    hook._jbp = True
    sys.unraisablehook = hook


def ocp_module():
    import orbax.checkpoint as ocp  # imported lazily: half a second, and only needed here

    return ocp


def short_reason(err):
    """orbax/tensorstore errors can be pages long: keep the first line, it names the file."""
    text = str(err).split(" See full TensorStore details")[0].strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


class _DropThreadEchoes(logging.Filter):
    """Drop orbax's re-logging of an exception its background thread raised: the same
    exception is re-raised to the caller (the save), which reports it."""

    def filter(self, record):
        return not (
            f"{os.sep}orbax{os.sep}" in record.pathname and "raised an exception" in str(record.msg)
        )


def silence_failed_save_aftermath():
    """Drop orbax's background-thread ERROR echoes of a failed save (see the module), and, as
    after a failed read, its pending writes dying on a closed event loop; every other record
    and unraisable exception still prints. Installed once, for the process: the echoes come
    from threads, possibly after the save has returned."""
    silence_failed_read_aftermath()
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropThreadEchoes) for f in logger.filters):
        logger.addFilter(_DropThreadEchoes())
