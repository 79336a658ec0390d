"""A run's life in its folder: start fresh or resume, log and checkpoint each epoch, finish.

:class:`Run` is what ``jbp train --out DIR [--resume]`` does around :func:`jbp.fit`::

    run = Run(out, resume=True, keep=3, checkpoint_every=1)   # locks the folder
    state0 = run.start(recipe, key)          # None: a fresh run; else the restored state
    fit(..., state=state0, early_stopping=run.early_stopping(patience),
        callback=lambda s, r: run.after_epoch(s, r) or stop_requested)
    run.finish()                             # the last state saved
    run.plot()                               # best-effort: a plot that fails is a warning
    run.close()                              # the folder unlocked

The order of the writes is what makes a kill at any moment harmless: an epoch's metrics line
is appended *before* its checkpoint, and a resume cuts ``metrics.jsonl`` back to the epoch of
the checkpoint it restored — so the log never misses an epoch and never repeats one. A folder
that already holds checkpoints is refused without ``resume`` (they would mix with a new
run's). What must match on resume is :func:`jbp.config.compat_key`; see
:mod:`jbp.checkpoint` for the restore policy (the latest readable checkpoint; unreadable
newer ones are moved aside, never deleted).

One run per folder: the writing process holds the folder's lock (:meth:`jbp.rundir.RunDir.lock`)
from the constructor to :meth:`Run.close`, or its death; a second run on a live folder is
refused (:class:`jbp.rundir.FolderBusy`, naming the holder's PID).

Each checkpoint carries early stopping's best-so-far (with ``patience``), so a resumed run
stops exactly where one never stopped would. A checkpoint that cannot be written raises an
``OSError`` naming it and saying which checkpoint is the latest saved. After a divergence,
:meth:`Run.save_last_good` saves the last good state as a stop would.

Without ``out`` every method does nothing, so callers need no special case. In a multi-process
run only process 0 writes (``writer=False`` elsewhere); every process restores.
"""

import sys

from jbp import checkpoint, config, rundir, stopping


def _say(msg):
    print(f"jbp train: {msg}", file=sys.stderr, flush=True)


class Run:
    """The ``--out`` folder of one run: checkpoints, ``metrics.jsonl`` and plots."""

    def __init__(self, out=None, *, resume=False, keep=3, checkpoint_every=1, writer=True):
        if resume and not out:
            raise ValueError("--resume needs --out DIR: the run folder to continue")
        self.out, self.resume, self.every = out, resume, checkpoint_every
        self.folder = rundir.RunDir(out) if out and writer else None
        self.ckpts = checkpoint.CheckpointDir(out, keep=keep) if out else None
        self.key = None  # the run's compat_key, recorded in each checkpoint
        self.last_state, self.saved = None, None
        self.best = None  # early stopping's best-so-far, restored from the checkpoint
        self.early = None  # the EarlyStopping fit updates (see early_stopping)
        if self.folder is not None:
            warning = self.folder.lock()  # last: nothing above can fail with the lock held
            if warning:
                _say(f"warning: {warning}")

    def start(self, recipe, key):
        """The state to continue from (``None``: start fresh); prepares the folder either way."""
        if self.ckpts is None:
            return None
        self.key = config.compat_key(recipe.config, recipe.model)
        if not self.resume:
            if self.ckpts.steps():
                raise ValueError(
                    f"--out {self.out} already holds checkpoints (epoch {self.ckpts.steps()[-1]}"
                    f"): add --resume to continue that run, or choose another --out"
                )
            return self._fresh()
        from jbp import epoch

        like = epoch.init_state(recipe.model, recipe.optimizer, key, recipe.dtype)
        found = self.ckpts.restore_latest(like, config=self.key, set_aside=self.folder is not None)
        if found is None:
            _say(f"no checkpoint in {self.ckpts.directory}: starting anew")
            return self._fresh()
        for step, reason, moved in found.skipped:
            _say(f"skipped checkpoint {step}: {reason}; moved to {moved}")
        self._warn_if_relaid(found.step)
        if self.folder is not None:
            kept = [r for r in self.folder.read_metrics() if r.get("epoch", 0) <= found.step]
            self.folder.write_metrics(kept)
        latest = ", the latest readable checkpoint" if found.skipped else ""
        _say(f"resuming from {self.ckpts.path(found.step)} (epoch {found.step}{latest})")
        self.saved = found.step
        self.best = found.best
        return found.state

    def early_stopping(self, patience):
        """The :class:`jbp.train.EarlyStopping` for ``fit`` (``None`` without ``patience``):
        a resumed run continues the best-so-far saved in its checkpoint."""
        if patience is None:
            return None
        if self.saved is not None and self.best is None:
            _say(
                f"checkpoint {self.saved} holds no early-stopping record (saved without "
                f"--patience, or by an older jbp): early stopping counts from epoch {self.saved}"
            )
        self.early = stopping.EarlyStopping(patience, best=self.best)
        return self.early

    def _fresh(self):
        if self.folder is not None:
            self.folder.write_metrics([])  # a fresh run starts a fresh log
        return None

    def _warn_if_relaid(self, step):
        """Resuming on another device layout continues, but not bit-identically: say so."""
        stored = checkpoint.read_meta(self.ckpts.path(step)).get("config") or {}
        for k in config.relaid(stored, self.key):
            _say(
                f"checkpoint {step} was saved with {k}={stored[k]}, this run has "
                f"{k}={self.key[k]}: it continues, but is not bit-identical to a run never "
                f"stopped (gradient shares are summed in another order)"
            )

    def after_epoch(self, state, record):
        """Log the epoch (metrics before checkpoint) and save every ``checkpoint_every``."""
        self.last_state = state  # the true end-of-epoch state (early stopping swaps params)
        if self.folder is None:
            return
        self.folder.append_metrics(record)
        if record["epoch"] % self.every == 0:
            self._save(state)

    def _save(self, state):
        """Checkpoint ``state`` with the best-so-far; an ``OSError`` says what is kept."""
        best = self.early.best() if self.early is not None else None
        try:
            self.ckpts.save(state, config=self.key, best=best)
        except OSError as e:
            kept = (
                f"the latest saved is {self.ckpts.path(self.saved)} (epoch {self.saved})"
                if self.saved
                else "no checkpoint of this run is saved"
            )
            raise OSError(e.errno, f"{e.strerror}; {kept}", e.filename) from e
        self.saved = int(state.epoch)

    def finish(self):
        """Save the last state unless saved already (the end, or a stop between saves)."""
        if self.folder is not None and self.last_state is not None:
            if int(self.last_state.epoch) != self.saved:
                self._save(self.last_state)

    def save_last_good(self, state):
        """After a divergence: save ``state`` (the last good one, ``err.state``) unless it is
        saved already; its checkpoint's path, or ``None`` (no folder, or no epoch done)."""
        if self.folder is None or state is None or int(state.epoch) == 0:
            return None
        if int(state.epoch) != self.saved:
            self._save(state)
        return self.ckpts.path(int(state.epoch))

    def close(self):
        """Close the checkpoint manager and release the folder's lock."""
        try:
            if self.ckpts is not None:
                self.ckpts.close()
        finally:
            if self.folder is not None:
                self.folder.unlock()

    def plot(self):
        """Write the plots; one that cannot be written is one warning line, never fatal."""
        if self.folder is not None:
            self.folder.plot(on_error=lambda m: _say(f"warning: {m} (the plot is not written)"))

    def records(self):
        """The metrics already logged (resumed at or past the target: where the run is)."""
        return self.folder.read_metrics() if self.folder is not None else []

    def checkpoint_path(self, epoch):
        """Where epoch ``epoch`` is saved; ``None`` without a folder to save to."""
        return self.ckpts.path(epoch) if self.folder is not None else None
