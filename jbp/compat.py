"""Does a checkpoint fit this run? Its stored tree and config against the run's, in words.

orbax (like ``flax.serialization``) restores a checkpoint into a tree of other shapes or
dtypes without complaint, so :mod:`jbp.checkpoint` compares first: the stored leaves'
shapes and dtypes against the state a fresh run would build (:func:`state_differences`), and
the stored run config against this run's (:func:`config_differences`; what it holds is
:func:`jbp.config.compat_key`). Each difference is one phrase a user can act on: ``layer 1 W
has shape (64, 30), this run expects (64, 50): another architecture``, ``optimizer state
differs …: another optimizer``, ``float64 vs float32: another --dtype``.
"""

import json

import jax
import numpy as np

from jbp.config import MAY_DIFFER, RECORDED
from jbp.util import key_name

#: config keys that may differ on resume: the target epoch; the device layout (recorded, and
#: warned about by jbp.run, since the run continues but not bit-identically)
IGNORED_CONFIG = MAY_DIFFER + RECORDED


def leaf_table(tree):
    """``{path tuple: (shape, dtype name)}`` of a pytree of arrays or orbax ArrayMetadata."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf)
        dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        out[tuple(key_name(k) for k in path)] = (tuple(shape), np.dtype(dtype).name)
    return out


def _describe(path):
    """A reader's name for a leaf: ('params', '0', 'W') -> 'layer 1 W'."""
    p = list(path)
    if not p:
        return "the state"
    if p[0] == "opt_state":
        rest = p[1:]
        if len(rest) >= 3 and rest[1].isdigit():
            return f"optimizer {rest[0]} of layer {int(rest[1]) + 1} {'/'.join(rest[2:])}"
        return "optimizer " + "/".join(rest)
    if p[0] == "params" and len(p) >= 3 and p[1].isdigit():
        return f"layer {int(p[1]) + 1} {'/'.join(p[2:])}"
    return "/".join(p)


def _n_layers(table):
    return len({p[1] for p in table if len(p) > 1 and p[0] == "params"})


def state_differences(stored, expected):
    """What keeps a checkpoint with leaves ``stored`` from restoring into ``expected``."""
    diffs = []
    top = lambda t, head: sorted({p[1] for p in t if len(p) > 1 and p[0] == head})  # noqa: E731
    if top(stored, "opt_state") != top(expected, "opt_state"):
        diffs.append(
            f"optimizer state differs (checkpoint: {', '.join(top(stored, 'opt_state'))}; this "
            f"run: {', '.join(top(expected, 'opt_state'))}): another optimizer"
        )
    if _n_layers(stored) != _n_layers(expected):
        diffs.append(
            f"checkpoint has {_n_layers(stored)} layers, this run expects "
            f"{_n_layers(expected)}: another architecture"
        )
    if diffs:
        return diffs
    missing, extra = (
        sorted(expected.keys() - stored.keys()),
        sorted(stored.keys() - expected.keys()),
    )
    if missing or extra:
        what = [f"missing {_describe(p)}" for p in missing] + [
            f"extra {_describe(p)}" for p in extra
        ]
        diffs.append(f"state structure differs ({', '.join(what[:4])}): another state layout")
    order = {("params",): 0, ("opt_state",): 1}
    leaf_diffs = []
    for path in sorted(expected.keys() & stored.keys(), key=lambda p: (order.get(p[:1], 2), p)):
        (s_shape, s_dt), (e_shape, e_dt) = stored[path], expected[path]
        if s_shape != e_shape:
            kind = "another architecture" if path[:1] in order else "another run"
            leaf_diffs.append(
                f"checkpoint {_describe(path)} has shape {s_shape}, this run expects {e_shape}: "
                f"{kind}"
            )
        elif s_dt != e_dt:
            leaf_diffs.append(
                f"checkpoint {_describe(path)} is {s_dt}, this run expects {e_dt}: another --dtype"
            )
    if len(leaf_diffs) > 3:  # the first few say it; the optimizer's moments repeat the params
        leaf_diffs = leaf_diffs[:3] + [f"{len(leaf_diffs) - 3} more leaves differ likewise"]
    return diffs + leaf_diffs


def config_differences(stored, expected):
    """What differs between a stored run config and this run's (``IGNORED_CONFIG`` aside).

    Two spellings of one run are equal (:func:`canonical`): ``ADAM`` and ``adam``, ``b1=0.9``
    (adam's default) and no ``b1``, ``base=1`` and ``base=1.0``.
    """
    stored_c, expected_c = canonical(stored), canonical(expected)
    diffs = []
    for k in sorted(set(stored) | set(expected)):
        if k in IGNORED_CONFIG:
            continue
        a, b = stored_c.get(k, "(not set)"), expected_c.get(k, "(not set)")
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            a, b = stored.get(k, "(not set)"), expected.get(k, "(not set)")  # as recorded
            diffs.append(f"{k}: checkpoint {_fmt(a)}, this run {_fmt(b)}")
    return diffs


#: run-config keys of a named function and of its options (see jbp.config.compat_key)
_SPECS = (("optimizer", "hparams"), ("schedule", "schedule_params"))


def canonical(config):
    """A run config with the spellings of one run made equal, for comparing.

    The optimizer and schedule names as their registries spell them, their options without
    those equal to the function's default, and numbers (not bools) as floats.
    """
    from jbp import optim, options, schedules

    out = dict(config)
    for (name_key, opts_key), registry in zip(
        _SPECS, (optim.BUILDERS, schedules.BUILDERS), strict=True
    ):
        name, opts = out.get(name_key), out.get(opts_key)
        if not isinstance(name, str):
            continue
        try:
            out[name_key], fn = options.lookup(name_key, name, registry)
        except options.OptionError:  # another jbp's name: compared as recorded
            continue
        if isinstance(opts, dict):
            listed = options.defaults(fn)
            given = {k: _number(v) for k, v in opts.items()}
            out[opts_key] = {
                k: v for k, v in given.items() if k not in listed or v != _number(listed[k])
            }
    return out


def _number(v):
    if isinstance(v, (list, tuple)):
        return [_number(x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return v


def _fmt(v):
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def jsonable(config):
    try:
        return json.loads(json.dumps(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"config must be JSON-serialisable, got {config!r}: {e}") from None
