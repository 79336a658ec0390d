"""A run's output folder (``--out DIR``): its lock, ``metrics.jsonl`` and PNG plots.

Every path written is resolved inside the folder first (no escape through ``..`` or a
symbolic link). ``metrics.jsonl`` is one JSON object per epoch — the records ``jbp.fit``
returns as ``history`` — appended and flushed as each epoch ends.

Made for the real world:

* **One run per folder.** :meth:`RunDir.lock` takes an exclusive ``flock`` on ``DIR/.lock``
  and writes this process's PID in it. A second run on the folder is refused with
  :class:`FolderBusy`, naming the holder's PID. The operating system drops the lock when the
  holder exits, however it ends (even ``SIGKILL``), so a dead run never blocks the next; the
  file itself stays (removing it would let two runs lock two different files).
* **Checked up front.** A ``DIR`` that is a file, lies under a file, or cannot be created or
  written raises :class:`jbp.util.PathError` before anything is done.
* **No writes through planted links.** The files jbp creates here (``metrics.jsonl.tmp``,
  ``.lock``, ``metrics.jsonl``) are opened with ``O_NOFOLLOW``, and the temporary file is
  created afresh with ``O_EXCL`` (a leftover or a link in its place is removed, never
  followed), so nothing outside the folder is ever written or truncated.
* **Plots are best-effort.** :meth:`RunDir.plot` reports a plot it cannot write to
  ``on_error`` and goes on with the next.
* An ``OSError`` raised here names the file it concerns (``err.filename``).
"""

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path

from jbp.util import PathError, os_message, os_reason

METRICS = "metrics.jsonl"
LOCK = ".lock"
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
#: file systems without flock: the run goes on unlocked, with a warning
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderBusy(PathError):
    """Another live process holds the run folder's lock; ``pid`` is its PID (or ``None``)."""

    def __init__(self, root, pid):
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            root,
            f"in use by {who}, a live run holding {Path(root) / LOCK}: wait for it to end "
            f"(or stop it), or choose another --out",
        )


@contextlib.contextmanager
def _naming(path):
    """Re-raise an ``OSError`` that names no file as one naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def check_usable(given):
    """Refuse, without creating anything, an ``--out`` that cannot become a writable folder:
    a file, a path under a file, or a folder (or nearest existing parent) not writable.
    Every process of a multi-process run checks this before the processes connect."""
    root = Path(given).expanduser().absolute()
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file, not a folder (--out names the run folder)"
        raise PathError(given if probe == root else str(probe), what)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PathError(str(probe), "not writable (permission denied)")


def _make_folder(root, given):
    """Create ``root`` if needed; :class:`PathError` if it cannot be a writable folder."""
    if root.exists() and not root.is_dir():
        raise PathError(given, "is a file, not a folder (--out names the run folder)")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PathError(e.filename or given, os_reason(e)) from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise PathError(given, "not writable (permission denied)")


class RunDir:
    """The ``--out`` folder of a run (created if missing; see the module for the checks)."""

    def __init__(self, path):
        self.root = Path(path).resolve()
        _make_folder(self.root, path)
        self._lock = None  # the lock file's object: closing it (or its collection) unlocks

    def path(self, name):
        """``root/name``, refusing any name that resolves outside the folder."""
        p = (self.root / name).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"refusing to write {name!r} outside the run folder {self.root}")
        return p

    # ------------------------------------------------------------------- lock
    def lock(self):
        """Hold the folder's exclusive lock until :meth:`unlock` or the process ends.

        Returns ``None``, or a warning when the file system cannot lock (the run goes on).

        Raises:
          FolderBusy: another live process holds it.
          PathError: the lock file cannot be opened.
        """
        if self._lock is not None:
            return None
        p = self.path(LOCK)
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise PathError(p, os_reason(e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise FolderBusy(self.root, pid) from None
        except OSError as e:
            os.close(fd)
            if e.errno in _NO_LOCKS:
                return f"{p}: cannot be locked ({os_reason(e)}): make sure no other run uses it"
            raise PathError(p, os_reason(e)) from None
        self._lock = os.fdopen(fd, "r+b", buffering=0)
        with _naming(p):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return None

    def unlock(self):
        """Release the lock (the file stays: see the module docstring)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ---------------------------------------------------------------- metrics
    def read_metrics(self):
        """The records already in ``metrics.jsonl`` (a torn last line is ignored)."""
        p = self.path(METRICS)
        if not p.exists():
            return []
        out = []
        for line in p.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def write_metrics(self, records):
        """Replace ``metrics.jsonl`` atomically with ``records`` (through a fresh temporary)."""
        p = self.path(METRICS)
        tmp = p.with_name(p.name + ".tmp")
        with _naming(tmp):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)  # a leftover of a killed run, or a link: removed, never followed
            with os.fdopen(os.open(tmp, _NEW, 0o644), "w") as f:
                f.write("".join(json.dumps(r) + "\n" for r in records))
                f.flush()
                os.fsync(f.fileno())
        try:
            os.replace(tmp, p)
        except OSError as e:  # the destination is the problem (a folder in its place): name it
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise OSError(e.errno, e.strerror or str(e), str(p)) from e

    def append_metrics(self, record):
        """Append one epoch's record and flush it to disk."""
        p = self.path(METRICS)
        with _naming(p), os.fdopen(os.open(p, _APPEND, 0o644), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # ------------------------------------------------------------------ plots
    def plot(self, records=None, *, on_error=None):
        """Write ``loss.png``, ``accuracy.png`` and ``lr.png`` against epochs.

        Returns the paths written. A plot that cannot be written calls ``on_error(message)``
        (``<path>: <reason>``) and the next one is tried; without ``on_error`` it raises.
        """
        records = self.read_metrics() if records is None else records
        if not records:
            return []
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as e:  # noqa: BLE001 - best-effort: reported, never fatal
            if on_error is None:
                raise
            on_error(f"matplotlib: {e}")
            return []
        written = []
        for fname, ylabel, series in PANELS:
            p = self.root / fname
            try:
                p = self.path(fname)
                _figure(plt, records, fname, ylabel, series, p)
                written.append(p)
            except Exception as e:  # noqa: BLE001 - a plot never costs the run its result
                if on_error is None:
                    raise
                on_error(os_message(e, p) if isinstance(e, OSError) else f"{p}: {e}")
        return written


PANELS = [
    ("loss.png", "loss", [("train_loss", "train"), ("test_loss", "test")]),
    ("accuracy.png", "test accuracy", [("test_accuracy", "test")]),
    ("lr.png", "learning rate", [("lr", "lr")]),
]


def _figure(plt, records, fname, ylabel, series, path):
    """One panel against epochs, saved to ``path`` (the figure is closed either way)."""
    ep = [r["epoch"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for key, label in series:
            ys = [r.get(key) for r in records]
            if any(v is None for v in ys):
                continue
            ax.plot(ep, ys, label=label, marker="." if len(ep) < 50 else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if fname == "loss.png":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with _naming(path):
            fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _read_pid(fd):
    """The PID a lock holder wrote (``None`` if it has not yet, or wrote something else)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
