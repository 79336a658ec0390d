"""Checkpoints of a :class:`jbp.TrainState` with orbax-checkpoint: atomic, checked, exact.

A checkpoint is one orbax directory with two items::

    <dir>/state/   the TrainState pytree (params, opt_state, step, epoch, key, model_state), orbax's
                   StandardSave: every leaf's exact bytes, shape and dtype
    <dir>/meta/    a small JSON object: format, epoch, step, ``state_sha256`` (SHA-256 of every
                   leaf's bytes, in tree order) and the run's ``config`` (sizes, activation,
                   optimizer and its hyperparameters, schedule, batch size, dtype, data, seed …)

The guarantees, for :func:`save` / :func:`restore` and for :class:`CheckpointDir` alike:

* **Atomic.** orbax writes into ``<dir>.orbax-checkpoint-tmp`` and renames it to ``<dir>``
  only once every byte is on disk (saves are synchronous: on disk when ``save`` returns). A
  process killed mid-save leaves the temporary directory behind and nothing reads it: the
  previous checkpoint is still the latest complete one. (The next save of that same epoch
  replaces the leftover; it never was a checkpoint.)
* **Exact.** ``restore`` returns the saved bits, or refuses: after orbax has read the arrays,
  their SHA-256 must equal the ``state_sha256`` recorded at save time, so a truncated or
  garbled file can never come back as slightly wrong numbers.
* **Checked against the run.** orbax (like ``flax.serialization``) happily restores a
  checkpoint into a tree of other shapes or dtypes. ``restore(path, like=state)`` first
  compares the stored tree leaf by leaf with ``like`` (the state a fresh ``init_state`` builds
  for this run) and raises :class:`CheckpointMismatch` naming what differs, e.g. ``layer 1 W
  has shape (64, 30), this run expects (64, 50): another architecture``, ``optimizer state
  differs (checkpoint: count, lr, m, v; this run: count, lr, s): another optimizer`` or
  ``float64 vs float32: another --dtype``. When ``config=`` is given, the stored config must
  agree as well (``epochs`` excepted: resuming to a later target is the point).
* **A failed save is one error.** A save that fails (disk full, permissions) raises an
  ``OSError`` naming the checkpoint's directory and the system's reason (``No space left on
  device``); orbax's echoes of it on its background threads are silenced. The previous
  checkpoints are untouched; the partial one is orbax's temporary directory, never read.
* **Never destructive.** Nothing here deletes a checkpoint it cannot read, and ``save`` never
  overwrites. A directory that cannot be read raises :class:`CheckpointCorrupt` with the path
  and orbax's reason. The one deletion is the rotation a run folder asks for: after a new
  checkpoint is committed, orbax removes the oldest beyond ``keep``.
* **Independent of the device layout.** Leaves are saved from a host copy (a replicated,
  data-parallel state from this process's first copy), and restored onto ``like``'s devices.

A run folder (``--out``) keeps one checkpoint per saved epoch in ``<out>/checkpoints/<epoch>``.
Policy for it (:meth:`CheckpointDir.restore_latest`, used by ``jbp train --resume``):
the latest checkpoint that restores is used. Newer ones that are unreadable (corrupt or
truncated) are reported and, so that the resumed run can save those epochs again, *moved*
(never deleted) to ``<out>/checkpoints-unreadable/<step>``. If no checkpoint restores, nothing
is moved and :class:`CheckpointCorrupt` lists them all. A mismatch is never skipped over: an
older checkpoint of the same run would mismatch too, so it is raised at once.

Reference: orbax-checkpoint, ``CheckpointManager`` and its atomicity contract
(https://orbax.readthedocs.io/en/latest/guides/checkpoint/checkpointing_pytrees.html).
"""

import errno as errno_mod
import os
import re
from pathlib import Path
from typing import NamedTuple

import jax

from jbp.checkpoint_format import (  # noqa: F401 - the single-checkpoint API, re-exported
    BEST,
    FORMAT,
    META,
    STATE,
    VERSION,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointMismatch,
    CheckpointVersion,
    check_version,
    read_meta,
    restore,
    restore_best,
    save,
    save_args,
    state_sha256,
)
from jbp.orbax_quiet import ocp_module, quiet, short_reason, silence_failed_save_aftermath
from jbp.util import integer

CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints-unreadable"
_STEP = re.compile(r"^[0-9]+$")


# ------------------------------------------------------------------ a run's folder
class Restored(NamedTuple):
    """What :meth:`CheckpointDir.restore_latest` found."""

    state: object  # the restored state
    step: int  # the checkpoint used (its name: the epoch it was saved after)
    skipped: list  # [(step, reason, moved_to)] newer checkpoints that could not be read
    best: object = None  # early stopping's best-so-far saved with it (None: none saved)


class CheckpointDir:
    """``<out>/checkpoints/<epoch>``: one orbax step per saved epoch, the latest ``keep`` kept.

    Args:
      root: the run folder (``--out``); checkpoints go to ``root/checkpoints``. Every path
        used is resolved inside ``root`` first: ``..`` or a symbolic link that leads
        elsewhere is refused.
      keep: how many of the latest checkpoints to keep (older ones are rotated out by orbax).
    """

    def __init__(self, root, *, keep=3):
        integer("keep", keep)
        self.root = Path(root).resolve()
        self.keep = int(keep)
        self.directory = self._inside(CHECKPOINTS)
        self._manager = None

    def _inside(self, *names):
        p = self.root.joinpath(*names).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(
                f"refusing to use {'/'.join(names)!r}: it resolves to {p}, outside the run "
                f"folder {self.root}"
            )
        return p

    def steps(self):
        """The complete checkpoints, oldest first (orbax's temporary directories excluded)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            int(p.name) for p in self.directory.iterdir() if _STEP.match(p.name) and p.is_dir()
        )

    def path(self, step):
        """The directory of checkpoint ``step``, checked to lie inside the run folder."""
        return self._inside(CHECKPOINTS, str(int(step)))

    def save(self, state, *, config=None, best=None):
        """Save ``state`` (and early stopping's ``best``) as checkpoint ``int(state.epoch)``;
        synchronous and atomic. A failure raises ``OSError`` naming the checkpoint's path."""
        step = int(state.epoch)
        path = self.path(step)  # refuse a step name that a link would send elsewhere
        args = save_args(state, config, best)
        silence_failed_save_aftermath()
        try:
            with quiet():
                if self._manager is None:
                    self._manager = self._open()
                self._manager.save(step, args=args, force=True)
                self._manager.wait_until_finished()
        except Exception as e:
            raise save_failure(path, e) from e
        return path

    def _open(self):
        ocp = ocp_module()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            enable_async_checkpointing=False,  # on disk when save() returns: safe to exit
            create=False,  # made below: orbax cannot create it with active_processes set
            # only the writing process saves (the state is replicated): no cross-process barrier
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                primary_host=jax.process_index(), active_processes={jax.process_index()}
            ),
        )
        return ocp.CheckpointManager(
            str(self.directory),
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                BEST: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(),
            },
        )

    def restore_latest(self, like, *, config=None, set_aside=True):
        """Restore the latest checkpoint that reads back (see the module's policy).

        Returns:
          a :class:`Restored`, or ``None`` when the folder holds no checkpoint.

        Raises:
          CheckpointMismatch: the latest readable checkpoint belongs to another run.
          CheckpointCorrupt: checkpoints exist but none can be read (nothing is moved).
        """
        steps = self.steps()
        if not steps:
            return None
        bad = []
        for step in reversed(steps):
            try:
                state = restore(self.path(step), like, config=config)
                best = restore_best(self.path(step), like)  # a damaged best/: unreadable too
            except CheckpointCorrupt as e:
                bad.append((step, str(e)))
                continue
            skipped = []
            for s, reason in bad:
                moved = self._set_aside(s) if set_aside else None
                skipped.append((s, reason, moved))
            return Restored(state, step, skipped, best)
        raise CheckpointCorrupt(
            f"no checkpoint in {self.directory} can be read (left in place): "
            + "; ".join(reason for _, reason in bad)
        )

    def _set_aside(self, step):
        """Move an unreadable checkpoint out of orbax's way (never delete it)."""
        src = self.path(step)
        dest_dir = self._inside(UNREADABLE)
        dest_dir.mkdir(exist_ok=True)
        dest, n = dest_dir / str(step), 1
        while dest.exists():
            dest, n = dest_dir / f"{step}.{n}", n + 1
        os.replace(src, dest)
        return dest

    def close(self):
        if self._manager is not None:
            with quiet():
                self._manager.close()
            self._manager = None


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def save_failure(path, err):
    """The ``OSError`` for a save to ``path`` that failed with ``err`` (orbax and tensorstore
    wrap the system's error in text: its errno is recovered, so the reason reads ``No space
    left on device``, not a page of tensorstore detail)."""
    code = None
    for e in (err, err.__cause__, err.__context__):
        if isinstance(e, OSError) and e.errno:
            code = e.errno
            break
    if code is None:
        m = _OS_ERROR_CODE.search(str(err))
        code = int(m.group(1)) if m else None
    if code in errno_mod.errorcode:
        reason = os.strerror(code)
    else:
        code, reason = errno_mod.EIO, short_reason(err)
    return OSError(code, f"could not save the checkpoint: {reason}", str(path))
