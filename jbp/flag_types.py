"""The argparse ``type``s of jbp's flags: every value range-checked as it is parsed.

A bad value is a :class:`UsageError` (through :class:`Parser`: one line, exit status 2) whose
message names the flag and the accepted range: counts are 1 … 2³¹−1 (the epoch and step
counters are int32), a seed 0 … 2³²−1 (``jax.random.key`` keeps 32 bits), ``--lr`` a
positive finite number, ``--divergence-threshold`` a number ≥ 1 or ``off``. :mod:`jbp.flags`
re-exports them.
"""

import argparse
import math

from jbp.util import INT32_MAX, SEED_MAX

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """A bad command-line value: reported as one line and exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with errors raised as :class:`UsageError` (one line, exit 2) instead of exit."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def number(name, *, positive=False):
    """An argparse ``type``: a finite float (``> 0`` if ``positive``), naming the flag."""

    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if positive and (not math.isfinite(v) or v <= 0):
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        return v

    return parse


def count(name, maximum=INT32_MAX):
    """An argparse ``type``: a positive integer up to ``maximum``, naming the flag and range."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = 0
        if not 1 <= v <= maximum:
            raise argparse.ArgumentTypeError(
                f"{name} must be a positive integer, got {text!r} (accepted: 1 … {maximum})"
            )
        return v

    return parse


def index(name, low, high, why=""):
    """An argparse ``type``: an integer in ``low … high`` (``why``: the reason for the bound)."""

    def parse(text):
        try:
            v = int(text)
        except ValueError:
            v = low - 1
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in {low} … {high}{why}, got {text!r}"
            )
        return v

    return parse


def seed(name="--seed"):
    """An argparse ``type`` for a seed of ``jax.random.key``."""
    return index(name, 0, SEED_MAX, " (jax.random.key keeps 32 bits)")


def divergence_threshold(text):
    """``--divergence-threshold X|off``: a finite number ≥ 1, or ``"off"``."""
    if text.strip().lower() in ("off", "none"):
        return "off"
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 1):
        raise argparse.ArgumentTypeError(
            f"--divergence-threshold must be a number >= 1 (a multiple of the initial loss) or "
            f"off, got {text!r}"
        )
    return v


def int_list(name, text, allow_auto=False):
    """``"64,_,10"`` → ``[64, None, 10]`` (``_`` only with ``allow_auto``)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if allow_auto and part in ("", "_", "auto"):
            out.append(None)
            continue
        try:
            v = int(part)
        except ValueError:
            raise UsageError(
                f"{name} must be comma-separated positive integers, got {text!r}"
            ) from None
        if not 1 <= v <= INT32_MAX:
            raise UsageError(
                f"{name} must be positive integers, got {text!r} (each 1 … {INT32_MAX})"
            )
        out.append(v)
    return out
