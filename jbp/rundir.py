"""A run's output folder (``--out DIR``): ``metrics.jsonl`` and PNG plots.

Every path written is resolved inside the folder first (no escape through ``..`` or a
symbolic link). ``metrics.jsonl`` is one JSON object per epoch — the records ``jbp.fit``
returns as ``history`` — appended and flushed as each epoch ends.
"""

import json
import os
from pathlib import Path

METRICS = "metrics.jsonl"


class RunDir:
    """The ``--out`` folder of a run."""

    def __init__(self, path):
        self.root = Path(path).resolve()
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out must be a directory, got a file: {path}")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name):
        """``root/name``, refusing any name that resolves outside the folder."""
        p = (self.root / name).resolve()
        if p != self.root and self.root not in p.parents:
            raise ValueError(f"refusing to write {name!r} outside the run folder {self.root}")
        return p

    def read_metrics(self):
        """The records already in ``metrics.jsonl`` (a torn last line is ignored)."""
        p = self.path(METRICS)
        if not p.exists():
            return []
        out = []
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return out

    def write_metrics(self, records):
        """Replace ``metrics.jsonl`` atomically with ``records``."""
        p = self.path(METRICS)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, p)

    def append_metrics(self, record):
        """Append one epoch's record and flush it to disk."""
        with open(self.path(METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def plot(self, records=None):
        """Write ``loss.png``, ``accuracy.png`` and ``lr.png`` against epochs."""
        records = self.read_metrics() if records is None else records
        if not records:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = [r["epoch"] for r in records]
        written = []
        panels = [
            ("loss.png", "loss", [("train_loss", "train"), ("test_loss", "test")]),
            ("accuracy.png", "test accuracy", [("test_accuracy", "test")]),
            ("lr.png", "learning rate", [("lr", "lr")]),
        ]
        for fname, ylabel, series in panels:
            fig, ax = plt.subplots(figsize=(6, 4))
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
            p = self.path(fname)
            fig.savefig(p, dpi=100)
            plt.close(fig)
            written.append(p)
        return written
