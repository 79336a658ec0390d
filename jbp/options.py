"""Named functions and their options, read from the functions themselves.

An optimizer or a schedule is chosen by name and tuned by keyword: on the command line as one
``name:key=value,…`` spec (``--optimizer adam:b1=0.9,b2=0.99``, ``--schedule
staircase:factor=0.5,every_epochs=10``), in Python as ``jbp.optim.get("adam", lr, b2=0.99)``.
The keys a name accepts are its function's own keyword parameters (:func:`accepted`), so
there is no second table to keep in step with the code; the defaults are the functions'
defaults; the values are checked by the functions, which name the argument when they refuse
one.

Spec syntax (:func:`parse_spec`): ``name`` alone, or ``name:key=value[,key=value…]``. A value
is an int, a float, ``true``/``false``, or a list: items after ``key=…`` that have no ``=``
of their own extend that key's value (``piecewise:boundaries_epochs=10,20,values=1e-2,1e-3``).
A key may be shortened to any unique prefix (``every`` for ``every_epochs``), as argparse
allows for long flags.
"""

import inspect


class OptionError(ValueError):
    """A bad ``name:key=value`` spec: unknown name or key, or a value that is not a literal."""


def accepted(fn, skip=()):
    """The keyword options of ``fn``: its parameters other than ``skip``, in order."""
    return tuple(
        name
        for name, p in inspect.signature(fn).parameters.items()
        if name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def defaults(fn, skip=()):
    """``{option: default}`` for the options of ``fn`` that have one."""
    params = inspect.signature(fn).parameters
    return {
        k: params[k].default for k in accepted(fn, skip) if params[k].default is not params[k].empty
    }


def lookup(kind, name, registry):
    """``registry[name]`` (``_`` may stand for ``-``, any case); else one clear error."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in registry:
        raise OptionError(f"unknown {kind} {name!r}; valid names: {', '.join(registry)}")
    return key, registry[key]


def check_keys(kind, name, given, keys):
    """Refuse the first key of ``given`` that is not in ``keys``, naming the accepted ones."""
    unknown = [k for k in given if k not in keys]
    if unknown:
        what = "hyperparameter" if kind == "optimizer" else "parameter"
        raise OptionError(
            f"{kind} {name!r} takes no {what} {unknown[0]!r}; it takes: {', '.join(keys) or 'none'}"
        )


def parse_spec(text, flag="--option"):
    """``"adam:b1=0.9,b2=0.99"`` → ``("adam", {"b1": 0.9, "b2": 0.99})`` (keys unexpanded)."""
    name, sep, rest = str(text).partition(":")
    name = name.strip()
    if not name:
        raise OptionError(f"{flag} needs a name before ':', got {text!r}")
    options, key = {}, None
    for item in rest.split(",") if sep and rest.strip() else ():
        item = item.strip()
        if "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if not key.isidentifier():
                raise OptionError(f"{flag}: {key!r} is not an option name, in {text!r}")
            if key in options:
                raise OptionError(f"{flag}: {key} is given twice, in {text!r}")
            options[key] = _literal(flag, key, value.strip(), text)
        elif key is None or not item:
            raise OptionError(f"{flag} options must be key=value, got {item!r} in {text!r}")
        else:  # another item of the previous key's list
            prev = options[key]
            options[key] = [*(prev if isinstance(prev, list) else [prev])]
            options[key].append(_literal(flag, key, item, text))
    return name, options


def _literal(flag, key, value, text):
    v = _number_or_bool(value)
    if v is None:
        raise OptionError(f"{flag}: {key}={value!r} is not a number or true/false, in {text!r}")
    return v


def _number_or_bool(value):
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return None


def parse_value(flag, text):
    """One flag's value, ``"0.9"`` or a list ``"10,20"``, as :func:`parse_spec` reads values."""
    items = [item.strip() for item in str(text).split(",")]
    values = [_number_or_bool(item) for item in items]
    for item, v in zip(items, values, strict=True):
        if v is None:
            what = f"{item!r} in {text!r}" if len(items) > 1 else repr(item)
            raise OptionError(f"{flag}: {what} is not a number or true/false")
    return values[0] if len(values) == 1 else values


def expand_keys(kind, name, options, keys):
    """Options with each key completed to the one accepted key it is a prefix of."""
    out = {}
    for k, v in options.items():
        if k in keys:
            full = k
        else:
            matches = [a for a in keys if a.startswith(k)]
            if len(matches) > 1:
                raise OptionError(
                    f"{kind} {name!r}: {k!r} could be {' or '.join(matches)}; spell it out"
                )
            check_keys(kind, name, [k] if not matches else [], keys)  # unknown: name them
            full = matches[0]
        if full in out:
            raise OptionError(f"{kind} {name!r}: {full} is given twice")
        out[full] = v
    return out


def format_spec(name, options):
    """The inverse of :func:`parse_spec`, for messages and the resume command."""
    if not options:
        return name
    items = []
    for k, v in options.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        items.append(f"{k}=" + ",".join(_show(x) for x in vals))
    return f"{name}:{','.join(items)}"


def _show(x):
    if isinstance(x, bool):
        return "true" if x else "false"
    return repr(x) if isinstance(x, float) else str(x)
