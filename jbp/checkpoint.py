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

import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jbp import compat
from jbp.orbax_quiet import ocp_module, quiet, short_reason, silence_failed_read_aftermath
from jbp.util import integer, tree_sha256

FORMAT = "jbp-checkpoint"
#: the format written; restore reads 1 … VERSION. Version 1: items state and meta; the state
#: is a TrainState (checkpoints from before models had state lack model_state: still read).
VERSION = 1
STATE, META = "state", "meta"
CHECKPOINTS = "checkpoints"
UNREADABLE = "checkpoints-unreadable"
_STEP = re.compile(r"^[0-9]+$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says which and why."""


class CheckpointCorrupt(CheckpointError):
    """The checkpoint's files cannot be read back (truncated, garbled, incomplete)."""


class CheckpointVersion(CheckpointError):
    """The checkpoint was written in a format version this jbp does not read."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint is readable but belongs to another run (architecture, optimizer, dtype)."""


def state_sha256(state):
    """SHA-256 of every leaf's bytes in tree order (``params_sha256`` over the whole state)."""
    return tree_sha256(state)


# -------------------------------------------------------------------- one checkpoint
def _host(x):
    """A host copy of one leaf. Replicated state (data-parallel runs) is saved once, from this
    process's first copy, so a checkpoint never depends on the device layout that wrote it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def _save_args(state, config):
    ocp = ocp_module()
    state = jax.tree.map(_host, state)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(state.epoch) if hasattr(state, "epoch") else None,
        "step": int(state.step) if hasattr(state, "step") else None,
        "state_sha256": state_sha256(state),
        "config": compat.jsonable(config or {}),
    }
    return ocp.args.Composite(
        **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    )


def save(path, state, *, config=None):
    """Write ``state`` (a TrainState or any pytree of arrays) as a checkpoint at ``path``.

    The save is atomic (written to a temporary directory, renamed when complete) and
    synchronous: when ``save`` returns, the checkpoint is on disk.

    Args:
      path: a directory that does not exist yet (an existing one is never overwritten).
      state: the pytree to save, e.g. the ``state`` returned by ``jbp.fit``.
      config: an optional JSON-serialisable dict describing the run; ``restore(...,
        config=)`` then refuses a checkpoint written with another config.

    Returns:
      The checkpoint's absolute ``Path``.
    """
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        raise ValueError(
            f"checkpoint path {path} already exists: refusing to overwrite it (choose a new path)"
        )
    ocp = ocp_module()
    args = _save_args(state, config)
    try:
        with quiet(), ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            ckptr.save(path, args=args)
    except Exception as e:  # disk full, permissions …: say where, keep the reason
        raise CheckpointError(f"could not save a checkpoint to {path}: {short_reason(e)}") from e
    return path


def read_meta(path):
    """The JSON ``meta`` item of the checkpoint at ``path`` (raises :class:`CheckpointCorrupt`)."""
    path = Path(path)
    f = path / META / "metadata"
    try:
        meta = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(
            f"checkpoint {path} is unreadable (corrupt or truncated): {META}/metadata: {short_reason(e)}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointCorrupt(
            f"checkpoint {path} is unreadable (corrupt or truncated): {META}/metadata is not a "
            f"{FORMAT} record"
        )
    return meta


def check_version(path, meta):
    """Refuse a checkpoint whose format ``version`` this jbp cannot read, saying which."""
    v = meta.get("version")
    if isinstance(v, bool) or not isinstance(v, int):
        raise CheckpointVersion(
            f"checkpoint {path} has no valid format version ({v!r}); this jbp reads version "
            f"{VERSION}"
        )
    if v > VERSION:
        raise CheckpointVersion(
            f"checkpoint {path} is format version {v}, written by a newer jbp; this jbp reads "
            f"version {VERSION} and older: upgrade jbp to resume it"
        )
    if v < 1:
        raise CheckpointVersion(
            f"checkpoint {path} is format version {v}, older than any this jbp reads (1 to "
            f"{VERSION}): resume it with the jbp that wrote it, or start a new run"
        )


def restore(path, like, *, config=None):
    """Read the checkpoint at ``path`` back into the structure of ``like``, exactly.

    Args:
      path: a checkpoint directory written by :func:`save` (or a step of a
        :class:`CheckpointDir`).
      like: a state of the expected structure, shapes and dtypes, e.g. ``init_state(net,
        optimizer, key, dtype)`` for the run being resumed; its values are not used.
      config: if given, the run config the checkpoint must have been saved with
        (``epochs`` may differ).

    Returns:
      The saved state, with ``like``'s pytree types (TrainState, the optimizer's NamedTuple)
      and bit-for-bit the saved values.

    Raises:
      CheckpointCorrupt: missing, truncated or garbled files (nothing is deleted).
      CheckpointMismatch: another architecture, optimizer, dtype or run config.
      CheckpointVersion: a format version this jbp does not read (newer or too old).
    """
    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointCorrupt(f"no checkpoint at {path}: not a directory")
    meta = read_meta(path)
    check_version(path, meta)
    ocp = ocp_module()
    silence_failed_read_aftermath()
    handler = ocp.StandardCheckpointHandler()
    try:
        with quiet():
            tree_meta = handler.metadata(path / STATE)
        tree_meta = tree_meta.tree if hasattr(tree_meta, "tree") else tree_meta
        stored = compat.leaf_table(tree_meta)
    except Exception as e:
        raise CheckpointCorrupt(
            f"checkpoint {path} is unreadable (corrupt or truncated): {short_reason(e)}"
        ) from None
    diffs = (
        compat.config_differences(meta.get("config") or {}, compat.jsonable(config))
        if config
        else []
    )
    diffs += compat.state_differences(stored, compat.leaf_table(like))
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit this run: {'; '.join(diffs[:6])}"
            + (f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else "")
        )
    target, legacy = like, _is_legacy(tree_meta, like)
    if legacy:  # saved before TrainState had model_state: read the five fields it has
        target = _StateV1(*like[:5])
    try:
        with quiet():
            state = handler.restore(path / STATE, args=ocp.args.StandardRestore(target))
        if legacy:
            state = like._replace(**state._asdict())
    except Exception as e:
        raise CheckpointCorrupt(
            f"checkpoint {path} is unreadable (corrupt or truncated): {short_reason(e)}"
        ) from None
    finally:
        handler.close()
    got = state_sha256(state)
    if got != meta.get("state_sha256"):
        raise CheckpointCorrupt(
            f"checkpoint {path} is corrupt: its arrays hash to {got[:12]}…, but "
            f"{str(meta.get('state_sha256'))[:12]}… was recorded when it was saved"
        )
    return state


class _StateV1(NamedTuple):
    """The TrainState of checkpoints written before models could have state."""

    params: object
    opt_state: object
    step: object
    epoch: object
    key: object


def _is_legacy(tree_meta, like):
    """A checkpoint without ``model_state``, restored into a state whose model_state is empty."""
    return (
        isinstance(tree_meta, dict)
        and "model_state" not in tree_meta
        and set(tree_meta) == set(_StateV1._fields)
        and hasattr(like, "model_state")
        and not jax.tree.leaves(like.model_state)
    )


# ------------------------------------------------------------------ a run's folder
class Restored(NamedTuple):
    """What :meth:`CheckpointDir.restore_latest` found."""

    state: object  # the restored state
    step: int  # the checkpoint used (its name: the epoch it was saved after)
    skipped: list  # [(step, reason, moved_to)] newer checkpoints that could not be read


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

    def save(self, state, *, config=None):
        """Save ``state`` as checkpoint ``int(state.epoch)``; synchronous and atomic."""
        step = int(state.epoch)
        self.path(step)  # refuse a step name that a link would send elsewhere
        args = _save_args(state, config)
        try:
            with quiet():
                if self._manager is None:
                    self._manager = self._open()
                self._manager.save(step, args=args, force=True)
                self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"could not save checkpoint {step} in {self.directory}: {short_reason(e)}"
            ) from e
        return self.path(step)

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
            except CheckpointCorrupt as e:
                bad.append((step, str(e)))
                continue
            skipped = []
            for s, reason in bad:
                moved = self._set_aside(s) if set_aside else None
                skipped.append((s, reason, moved))
            return Restored(state, step, skipped)
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
