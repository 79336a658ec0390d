"""One checkpoint on disk: its format, and :func:`save` / :func:`restore` of a state, exactly.

The format (version :data:`VERSION`) is one orbax directory with two items: ``state/``, the
TrainState pytree in orbax's StandardSave (every leaf's exact bytes, shape and dtype), and
``meta/``, a JSON object with ``format``, ``version``, ``epoch``, ``step``, ``state_sha256``
and the run's ``config``. A run with early stopping adds a third, ``best/`` (the best epoch's
``params`` and ``model_state``), and ``meta["best"]`` (its ``loss``, ``epoch`` and
``sha256``): :func:`restore_best` reads them back. :func:`restore` reads versions 1 …
:data:`VERSION` and refuses another with :class:`CheckpointVersion`, saying whether jbp or
the checkpoint is the newer.
The guarantees (atomic, exact, checked against the run, never destructive, independent of
the device layout) are described in :mod:`jbp.checkpoint`, which re-exports these names.
"""

import json
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from jbp import compat
from jbp.orbax_quiet import ocp_module, quiet, short_reason, silence_failed_read_aftermath
from jbp.util import tree_sha256

FORMAT = "jbp-checkpoint"
#: the format written; restore reads 1 … VERSION. Version 1: items state and meta; the state
#: is a TrainState (checkpoints from before models had state lack model_state: still read).
#: The optional item best (early stopping's best-so-far) kept the version at 1: it is only
#: added, a jbp that ignores it restores the state exactly as before, and a checkpoint
#: without it reads as one from a run without early stopping.
VERSION = 1
STATE, META, BEST = "state", "meta", "best"


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


def save_args(state, config, best=None):
    """orbax's save arguments: the host copy of ``state``, its ``meta`` record and, given
    ``best`` (a :class:`jbp.stopping.Best`), early stopping's best-so-far."""
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
    items = {STATE: ocp.args.StandardSave(state)}
    if best is not None:
        tree = jax.tree.map(_host, {"params": best.params, "model_state": best.model_state})
        meta["best"] = {"loss": float(best.loss), "epoch": int(best.epoch),
                        "sha256": state_sha256(tree)}  # fmt: skip
        items[BEST] = ocp.args.StandardSave(tree)
    return ocp.args.Composite(**items, **{META: ocp.args.JsonSave(meta)})


def save(path, state, *, config=None, best=None):
    """Write ``state`` (a TrainState or any pytree of arrays) as a checkpoint at ``path``.

    The save is atomic (written to a temporary directory, renamed when complete) and
    synchronous: when ``save`` returns, the checkpoint is on disk.

    Args:
      path: a directory that does not exist yet (an existing one is never overwritten).
      state: the pytree to save, e.g. the ``state`` returned by ``jbp.fit``.
      config: an optional JSON-serialisable dict describing the run; ``restore(...,
        config=)`` then refuses a checkpoint written with another config.
      best: early stopping's best-so-far (:class:`jbp.stopping.Best`), read back by
        :func:`restore_best`.

    Returns:
      The checkpoint's absolute ``Path``.
    """
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        raise ValueError(
            f"checkpoint path {path} already exists: refusing to overwrite it (choose a new path)"
        )
    ocp = ocp_module()
    args = save_args(state, config, best)
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
    silence_failed_read_aftermath()
    handler = ocp_module().StandardCheckpointHandler()
    try:
        tree_meta = _unreadable_as_corrupt(path, lambda: _tree_meta(handler, path))
        _check_fits(path, meta, tree_meta, like, config)
        state = _unreadable_as_corrupt(path, lambda: _read_state(handler, path, tree_meta, like))
    finally:
        handler.close()
    got = state_sha256(state)
    if got != meta.get("state_sha256"):
        raise CheckpointCorrupt(
            f"checkpoint {path} is corrupt: its arrays hash to {got[:12]}…, but "
            f"{str(meta.get('state_sha256'))[:12]}… was recorded when it was saved"
        )
    return state


def _unreadable_as_corrupt(path, read):
    """``read()``, with any failure of orbax's reading raised as :class:`CheckpointCorrupt`."""
    try:
        with quiet():
            return read()
    except Exception as e:
        raise CheckpointCorrupt(
            f"checkpoint {path} is unreadable (corrupt or truncated): {short_reason(e)}"
        ) from None


def _tree_meta(handler, path, item=STATE):
    tree_meta = handler.metadata(path / item)
    return tree_meta.tree if hasattr(tree_meta, "tree") else tree_meta


def _check_fits(path, meta, tree_meta, like, config):
    """Raise :class:`CheckpointMismatch` naming what keeps the checkpoint from this run."""
    stored = compat.leaf_table(tree_meta)
    diffs = []
    if config:
        diffs = compat.config_differences(meta.get("config") or {}, compat.jsonable(config))
    diffs += compat.state_differences(stored, compat.leaf_table(like))
    if diffs:
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit this run: {'; '.join(diffs[:6])}"
            + (f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else "")
        )


def _read_state(handler, path, tree_meta, like):
    """The arrays, into ``like``'s structure (a checkpoint from before ``model_state``: the
    five fields it has, then ``like``'s empty model state)."""
    legacy = _is_legacy(tree_meta, like)
    target = _StateV1(*like[:5]) if legacy else like
    state = handler.restore(path / STATE, args=ocp_module().args.StandardRestore(target))
    return like._replace(**state._asdict()) if legacy else state


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


def restore_best(path, like):
    """Early stopping's best-so-far saved with the checkpoint at ``path``, exactly.

    Args:
      path: a checkpoint directory.
      like: the run's state (``like.params`` and ``like.model_state`` give the structure).

    Returns:
      a :class:`jbp.stopping.Best`, or ``None`` if the checkpoint has none (saved without
      early stopping, or by a jbp from before it was kept).

    Raises:
      CheckpointCorrupt: the item cannot be read, or its bytes differ from those saved.
      CheckpointMismatch: its arrays do not fit ``like``.
    """
    from jbp.stopping import Best

    path = Path(path).absolute()
    record = read_meta(path).get("best")
    if not isinstance(record, dict) or not (path / BEST).is_dir():
        return None
    target = {"params": like.params, "model_state": like.model_state}
    silence_failed_read_aftermath()
    handler = ocp_module().StandardCheckpointHandler()
    try:
        tree_meta = _unreadable_as_corrupt(path, lambda: _tree_meta(handler, path, BEST))
        diffs = compat.state_differences(compat.leaf_table(tree_meta), compat.leaf_table(target))
        if diffs:
            raise CheckpointMismatch(
                f"checkpoint {path}: its best-so-far does not fit this run: {'; '.join(diffs[:6])}"
            )
        args = ocp_module().args.StandardRestore(target)
        tree = _unreadable_as_corrupt(path, lambda: handler.restore(path / BEST, args=args))
    finally:
        handler.close()
    if state_sha256(tree) != record.get("sha256"):
        raise CheckpointCorrupt(f"checkpoint {path} is corrupt: {BEST}/ does not hash as saved")
    return Best(float(record["loss"]), int(record["epoch"]), tree["params"], tree["model_state"])
