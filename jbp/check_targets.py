"""What ``jbp check module:attr`` checks: resolve the target, parse its input shape, draw data.

``load_target("module:attr")`` (or ``"path/to/file.py:attr"``; ``attr`` may be dotted)
imports the module or file and returns a **layer** (``init``, ``forward``, ``backward``) or a
**model** (``loss``, ``loss_and_grad``); a class or a zero-argument factory is called to get
one. Every failure is a ``ValueError`` saying what is wrong: no colon, module or file not
found, attribute not found, a factory that needs arguments, or neither a layer nor a model.

``parse_shape`` reads an input shape from the command line (``"28,28"``, ``"28x28"``,
``"4;4"`` for two inputs). ``model_batch`` draws what a model is checked on: x ~ N(0, 1) of
shape ``(batch, *in_shape)`` and integer labels y uniform in [0, n_out), in float64.
"""

import importlib
import importlib.util
import inspect
import os
import sys

import jax
import jax.numpy as jnp

from jbp.check_trees import draw_input, enable_x64, numpy_rng, shape_tree


def is_layer(obj):
    """Has ``init``, ``forward`` and ``backward``."""
    return all(callable(getattr(obj, n, None)) for n in ("init", "forward", "backward"))


def is_model(obj):
    """Has ``loss`` and ``loss_and_grad``."""
    return all(callable(getattr(obj, n, None)) for n in ("loss", "loss_and_grad"))


def _import_file(path, spec, mod):
    """The module at file ``path`` (given as ``mod``), imported under a unique name."""
    if not os.path.isfile(path):
        raise ValueError(f"{spec!r}: no such file {mod!r}")
    stem = os.path.splitext(os.path.basename(path))[0]
    name = f"_jbp_check_{stem}_{abs(hash(path)):x}"
    s = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(s)
    sys.modules[name] = module  # dataclasses look their module up while it runs
    sys.path.insert(0, os.path.dirname(path))  # its sibling modules import
    try:
        s.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    finally:
        sys.path.remove(os.path.dirname(path))
    return module


def _import(mod, spec):
    if mod.endswith(".py") or os.sep in mod or "/" in mod:
        return _import_file(os.path.abspath(mod), spec, mod)
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m` would: ./mine.py
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name and (mod == e.name or mod.startswith(e.name + ".")):
            raise ValueError(
                f"{spec!r}: module {mod!r} not found (give an importable module name or a "
                f"path to a .py file, e.g. path/to/layers.py:MyLayer)"
            ) from None
        raise ValueError(f"{spec!r}: importing {mod!r} failed: {e}") from e


def load_module_attribute(mod, attr, spec):
    """``mod:attr`` imported (a module name, or a path to a .py file); ``attr`` may be dotted.

    Raises ``ValueError`` naming what was not found.
    """
    if not mod or not attr:
        raise ValueError(f"{spec!r}: both the module and the attribute must be given")
    obj = _import(mod, spec)
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            where = mod if i == 0 else f"{mod}:{'.'.join(attr.split('.')[:i])}"
            raise ValueError(f"{spec!r}: {where} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def load_target(spec):
    """Resolve ``"module:attribute"`` (or ``"path/to/file.py:attribute"``) to a layer or model.

    The attribute may be dotted (``module:ns.layer``). A class, or a zero-argument callable
    that is not itself a layer (``init``/``forward``/``backward``) or a model
    (``loss``/``loss_and_grad``), is called to get one. Raises ``ValueError`` with a message
    saying what is wrong: no colon, module or file not found, attribute not found, a factory
    that needs arguments, or an object that is neither a layer nor a model.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"expected 'module:attribute' or 'path/to/file.py:attribute', got {spec!r}"
        )
    mod, _, attr = spec.rpartition(":")
    obj = load_module_attribute(mod, attr, spec)
    if isinstance(obj, type) or (not (is_layer(obj) or is_model(obj)) and callable(obj)):
        obj = _call_factory(obj, spec)
    if not (is_layer(obj) or is_model(obj)):
        raise ValueError(
            f"{spec!r} is a {type(obj).__name__}, neither a layer (init, forward, backward) "
            f"nor a model (loss, loss_and_grad)"
        )
    return obj


def _call_factory(obj, spec):
    """``obj()``, or a ``ValueError`` when its signature needs arguments."""
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise ValueError(
            f"{spec!r} is a callable that needs arguments; point at a layer, a model, or "
            f"a zero-argument function that returns one"
        ) from None
    except ValueError:  # no signature available: just try
        pass
    return obj()


def parse_shape(s):
    """A shape from a tuple or a string: ``"28,28"``, ``"28x28"``, ``"(3,)"``; several inputs
    separated by ``;``: ``"4;4"`` -> ``((4,), (4,))``."""
    if s is None:
        return None
    if isinstance(s, str):
        parts = []
        for part in s.split(";"):
            t = part.strip().strip("()[]").replace("x", ",")
            try:
                parts.append(tuple(int(v) for v in t.split(",") if v.strip()))
            except ValueError:
                raise ValueError(
                    f"in_shape must be integers like '28,28' (or '4;4' for two inputs), got {s!r}"
                ) from None
        return parts[0] if len(parts) == 1 else tuple(parts)
    return shape_tree(s)


def model_n_out(model, params, x):
    """The model's number of outputs: ``n_out``, ``out_shape[-1]``, or the last axis of the
    output of ``apply``/``predict``/``forward``/``logits``."""
    n = getattr(model, "n_out", None)
    if n is not None:
        return int(n)
    out = getattr(model, "out_shape", None)
    if out is not None:
        return int(shape_tree(out)[-1])
    for name in ("apply", "predict", "forward", "logits"):
        fn = getattr(model, name, None)
        if callable(fn):
            try:
                o = jax.eval_shape(lambda p, xx, fn=fn: fn(p, xx), params, x)
                return int(jax.tree.leaves(o)[0].shape[-1])
            except Exception:  # noqa: BLE001 - try the next convention
                continue
    raise ValueError(
        "cannot tell the model's number of outputs: give it an n_out or out_shape attribute"
    )


def model_batch(model, spec, shape, batch, key):
    """(x, y) for checking a model from the command line (float64): x ~ N(0, 1) of shape
    ``(batch, *shape)`` (``shape`` defaults to ``model.in_shape``), y integer labels."""
    with enable_x64():
        if shape is None:  # an explicit in_shape wins over the model's
            shape = parse_shape(getattr(model, "in_shape", None))
        if shape is None:
            raise ValueError(
                f"{spec!r} is a model without an in_shape attribute: give one (jbp check "
                f"--in-shape 28,28,1; in_shape= from Python)"
            )
        rng = numpy_rng(key, 12345)
        x = draw_input(rng, shape, batch, jnp.float64)
        params, _ = model.initialize(key, jnp.float64)
        n_out = model_n_out(model, params, x)
        y = jnp.asarray(rng.integers(0, n_out, batch))
    return x, y
