"""What a backward check reports: one ``Row`` per leaf, named ``Check``s, the ``LayerReport``.

A row compares the hand-written gradient of one leaf of the parameters (``kind="param"``) or
of the input (``kind="input"``) with two references:

- ``rel_vjp``: the relative difference ‖a − b‖₂/(‖a‖₂ + ‖b‖₂) between the hand-written
  gradient a and ``jax.vjp`` of the forward (``jax.grad`` of the loss for a model), the
  maximum over the random cotangents tried;
- ``rel_fd``: |a − b|/(|a| + |b|) between ⟨a, u⟩ and a finite-difference directional
  derivative along one random unit direction u of that leaf alone.

A ``Check`` is a whole-layer (or whole-model) property: ``ok`` is True, False, or None when
the property does not apply. A report is ``ok`` when every row passes and no check is False.
It prints as a text table (``report.table()``) and serialises to plain JSON types
(``report.to_dict()``; a non-finite number becomes ``None``).
"""

import dataclasses
import math

import numpy as np

#: default tolerances (float64): backward vs autodiff, finite differences, jit/vmap vs eager
AUTODIFF_TOL = 1e-10
FD_TOL = 1e-7
IMPL_TOL = 1e-12


@dataclasses.dataclass
class Row:
    """One leaf of params (``kind="param"``) or of x (``kind="input"``)."""

    name: str
    kind: str
    shape: tuple
    rel_vjp: float  # backward vs jax.vjp (jax.grad for models), max over the cotangents
    rel_fd: float  # ⟨backward, u⟩ vs finite differences along one random unit u
    ok: bool
    note: str = ""


@dataclasses.dataclass
class Check:
    """A whole-layer check: ``ok`` is True, False, or None when it does not apply."""

    ok: bool | None
    detail: str


@dataclasses.dataclass
class LayerReport:
    """What ``check_layer`` / ``check_model`` found; ``ok`` when every row and check passes."""

    target: str
    kind: str  # "layer" or "model"
    rows: list
    checks: dict
    kinks_redrawn: int
    dtype: str
    autodiff_tol: float
    fd_tol: float
    impl_tol: float
    batch: int
    cotangents: int
    reference: str = "jax.vjp"
    notes: list = dataclasses.field(default_factory=list)

    @property
    def ok(self):
        return all(r.ok for r in self.rows) and all(c.ok is not False for c in self.checks.values())

    @property
    def failures(self):
        """Names of the failing rows and checks."""
        return [r.name for r in self.rows if not r.ok] + [
            n for n, c in self.checks.items() if c.ok is False
        ]

    def to_dict(self):
        """A JSON-serialisable dict (non-finite numbers become ``None``)."""
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["failures"] = self.failures
        return _jsonable(d)

    def table(self):
        """A readable text table: one line per leaf, one per check, then PASS/FAIL."""
        return "\n".join(self._row_lines() + self._check_lines() + [self._verdict_line()])

    def __str__(self):
        return self.table()

    def _row_lines(self):
        who = "manual" if self.kind == "model" else "backward"
        c1, c2 = f"{who} vs {self.reference}", f"{who} vs FD"
        nw = max([4] + [len(r.name) for r in self.rows])
        sw = max([5] + [len(str(tuple(r.shape))) for r in self.rows])
        cot = f"{self.cotangents} cotangents, " if self.kind == "layer" else ""
        lines = [
            f"check_{self.kind}: {self.target} ({self.dtype}, batch {self.batch}, {cot}"
            f"kinks redrawn: {self.kinks_redrawn})",
            f"{'leaf':<{nw}} {'kind':<5} {'shape':>{sw}} {c1:>20} {c2:>15}  result",
        ]
        for r in self.rows:
            lines.append(
                f"{r.name:<{nw}} {r.kind:<5} {str(tuple(r.shape)):>{sw}} {r.rel_vjp:>20.3e} "
                f"{r.rel_fd:>15.3e}  {'ok' if r.ok else 'FAIL'}"
                + (f"  ({r.note})" if r.note else "")
            )
        return lines

    def _check_lines(self):
        cw = max([5] + [len(n) for n in self.checks])
        lines = [f"{'check':<{cw}}  result  detail"]
        for n, c in self.checks.items():
            res = {True: "ok", False: "FAIL", None: "n/a"}[c.ok]
            lines.append(f"{n:<{cw}}  {res:<6}  {c.detail}")
        return lines + [f"note: {m}" for m in self.notes]

    def _verdict_line(self):
        verdict = "PASS" if self.ok else "FAIL: " + ", ".join(self.failures)
        return (
            f"tolerances: {self.reference} < {self.autodiff_tol:g}, finite differences < "
            f"{self.fd_tol:g}, jit/vmap < {self.impl_tol:g} ({self.dtype}) -> {verdict}"
        )


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    if v is None or isinstance(v, str):
        return v
    return str(v)
