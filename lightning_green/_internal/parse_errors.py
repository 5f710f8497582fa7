"""One line from jsonargparse's nested parse errors, in the house style (``Owner(name=value): ... must be ...``).

jsonargparse rejects a value of the wrong type, a ``Literal`` outside its choices, or an unknown key while it parses,
before any of our own checks run, and says so in a tree of every ``Union`` alternative it tried (the callback the
user named, Lightning's base ``Callback``, ``None``), some 20 lines under a 50-line usage text. The user's mistake is
one branch of that tree: the class they named, the key, the value and what the key takes.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import re

__all__ = ["summarise_parse_error"]

_CLASS = re.compile(r"^- Problem with given class_path '([^']+)':$")
_KEY = re.compile(r'^(?:- )?Parser key "([^"]+)":$')
_NOT_ACCEPTED = re.compile(r"^(?:- )?Option '([^']+)' is not accepted$")
_EXPECTED = re.compile(r"^(?:- )?Expected an? (.+?)(?:\. Got value: (.*))?$")
_SUBTYPES = re.compile(r"^Subtypes: \[(.*)\]$")
_GIVEN = re.compile(r"^Given value: (.*)$")
_TYPE = re.compile(r"<class '([^']+)'>")
_NO_ATTRIBUTE = re.compile(r"^module '([^']+)' has no attribute '([^']+)'$")
_NO_MODULE = re.compile(r"^No module named '([^']+)'$")
_NESTED = re.compile(r"Given value: NestedArg\(key='([^']*)', val='([^']*)'\)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _type_name(text: str) -> str:
    text = text.strip()
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    match = _TYPE.fullmatch(text)
    name = match.group(1).rpartition(".")[2] if match else text
    if name == "NoneType":
        return "None"
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def _alternatives(subtypes: str) -> list[str]:
    """The types of jsonargparse's ``Subtypes: [...]`` list, split at its own commas (not those inside brackets).

    Example:
        >>> _alternatives("dict[int, str], <class 'NoneType'>")
        ['a dict[int, str]', 'None']
        >>> _alternatives("collections.abc.Callable[[], float], typing.Literal['a', 'b']")
        ['a Callable[[], float]', "one of 'a', 'b'"]
        >>> _alternatives("typing.Literal['[x', 'b'], <class 'NoneType'>")  # brackets inside quotes are text
        ["one of '[x', 'b'", 'None']
    """
    parts, depth, start, quote = [], 0, 0, ""
    for i, char in enumerate(subtypes):
        if quote:
            quote = "" if char == quote else quote
            continue
        if char in "'\"":
            quote = char
            continue
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            parts.append(subtypes[start:i])
            start = i + 1
    parts.append(subtypes[start:])
    names = (_type_name(re.sub(r"^[\w.]*\.(?=\w+\[)", "", p.strip())) for p in parts if p.strip())
    return list(dict.fromkeys(names))


def _non_finite(value: str | None) -> bool:
    """Whether ``value`` is text for NaN or an infinity (``nan``, ``inf``, ``-Infinity``)."""
    try:
        return value is not None and not math.isfinite(float(value))
    except ValueError:
        return False


def _suggest(class_path: str, key: str) -> str:
    """`` (did you mean `x`?)`` from the class's own parameters, or nothing."""
    module, _, name = class_path.rpartition(".")
    try:
        params = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
    except Exception:  # a class we cannot import or inspect: no suggestion
        return ""
    close = difflib.get_close_matches(key, params, n=1)
    return f"; did you mean `{close[0]}`?" if close else ""


def summarise_parse_error(message: str) -> str:
    """The user's mistake in jsonargparse's ``message``, on one line (``message`` unchanged if it is not understood).

    Example:
        >>> msg = '''Parser key "trainer.callbacks":
        ...   Does not validate against any of the Union subtypes
        ...   Errors:
        ...     - Problem with given class_path 'lightning_green.AMPScheduler':
        ...         Parser key "interval":
        ...           Expected a typing.Literal['epoch', 'step']. Got value: hour
        ...     - Problem with given class_path 'lightning.Callback':
        ...         Option 'interval' is not accepted
        ...     - Expected a <class 'NoneType'>'''
        >>> summarise_parse_error(msg)
        "AMPScheduler(interval='hour'): `interval` must be one of 'epoch', 'step'."
        >>> summarise_parse_error('''Parser key "trainer.max_epochs":
        ...   Does not validate against any of the Union subtypes
        ...   Subtypes: [<class 'int'>, <class 'NoneType'>]
        ...   Given value: abc''')
        "--trainer.max_epochs='abc': must be an int or None."
        >>> summarise_parse_error('''Parser key "trainer.gradient_clip_val":
        ...   Does not validate against any of the Union subtypes
        ...   Subtypes: [<class 'int'>, <class 'float'>, <class 'NoneType'>]
        ...   Given value: nan''')
        "--trainer.gradient_clip_val='nan': must be a finite number or None."
    """
    lines = [line.rstrip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message.strip()
    outer = _KEY.match(lines[0].strip())
    nested = _NESTED.search(message)
    if outer and nested and nested.group(1).split(".")[0].isdigit():
        # `--trainer.callbacks.2.init_args.x=v`: jsonargparse takes no list index on the command line, and blamed
        # whichever class it tried first.
        return (
            f"--{outer.group(1)}.{nested.group(1)}={nested.group(2)!r}: a list index cannot name an entry on the "
            f"command line; set it in a --config file (give the whole `{outer.group(1)}` list there), or after "
            f"`--{outer.group(1)}+=Class` use `--{outer.group(1)}.<argument>=...` (the entry added last)."
        )
    owner, body = None, lines[1:]
    for i, line in enumerate(lines):
        found = _CLASS.match(line.strip())
        if found:  # the first class jsonargparse tried is the one the user named
            owner, depth = found.group(1), _indent(line)
            body = []
            for inner in lines[i + 1 :]:
                if _indent(inner) <= depth:
                    break
                body.append(inner)
            break
    stripped = [line.strip() for line in body]
    short = owner.rpartition(".")[2] if owner else None
    if owner:
        missing = _missing_class(owner, stripped)
        if missing:
            where = f"--{outer.group(1)}" if outer else "class_path"
            return f"{where}={owner!r}: {missing}"
    for line in stripped:
        unknown = _NOT_ACCEPTED.match(line)
        if unknown and owner:
            key = unknown.group(1)
            return f"{short}: `{key}` is not one of its arguments{_suggest(owner, key)}"
    keys = [m.group(1) for m in map(_KEY.match, stripped) if m]
    key = keys[-1] if keys else (outer.group(1) if outer and not owner else None)
    if key is None:
        return message.strip()
    after = stripped[stripped.index(f'Parser key "{key}":') + 1 :] if keys else stripped
    names: list[str] | None = None
    value = None
    for line in after:
        if names is None and (sub := _SUBTYPES.match(line)):
            names = _alternatives(sub.group(1))
        elif names is None and (exp := _EXPECTED.match(line)) and not line.startswith("- "):
            names, value = [_type_name(exp.group(1))], exp.group(2)
        elif value is None and (given := _GIVEN.match(line)):
            value = given.group(1)
    if names is None:
        return message.strip()
    if "a float" in names and _non_finite(value):
        # jsonargparse reads `nan`/`inf` from the command line as text and only says "a float": the number is what is
        # wrong, as our own checks say it (`must be a number that is finite`).
        names = ["a finite number", *(n for n in names if n not in ("a float", "an int"))]
    expected = " or ".join(names)
    shown = repr(value) if value is not None else "?"
    if short:
        return f"{short}({key}={shown}): `{key}` must be {expected}."
    return f"--{key}={shown}: must be {expected}{_suggest_subclass(after, value) or '.'}"


def _missing_class(class_path: str, lines: list[str]) -> str | None:
    """What is wrong with a class path that does not import (a misspelled class or module), with the closest name.

    jsonargparse reports the error raised while importing the path, wherever it came from: a ``module 'os' has no
    attribute 'x'`` or ``No module named 'dep'`` raised inside the user's own module is a bug or a missing dependency
    there, not a misspelling of the path, and is said as such with the original error.
    """
    parts = class_path.split(".")
    prefixes = {".".join(parts[:k]): parts[k] if k < len(parts) else None for k in range(1, len(parts) + 1)}
    importing = class_path.rpartition(".")[0] or class_path  # the module jsonargparse imports the class from
    for line in lines:
        attr = _NO_ATTRIBUTE.match(line)
        if attr:
            module, name = attr.groups()
            if module not in prefixes or prefixes[module] != name:  # raised inside the module being imported
                return (
                    f"importing `{importing}` failed (AttributeError: {line}): an error in that module's code, not a "
                    "misspelled class path."
                )
            try:
                mod = importlib.import_module(module)
                names = list(getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")])
            except Exception:  # cannot look inside: no suggestion
                names = []
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean `{module}.{close[0]}`?" if close else "."
            return f"module {module!r} has no class {name!r}{hint}"
        no_module = _NO_MODULE.match(line)
        if no_module:
            if no_module.group(1) not in prefixes:  # a module the user's module imports is missing
                return (
                    f"importing `{importing}` failed (ModuleNotFoundError: {line}): a module it imports is not "
                    "installed."
                )
            return f"no module named {no_module.group(1)!r}."
    return None


def _suggest_subclass(lines: list[str], value: str | None) -> str:
    """``; did you mean `X`?`` for a bare class name close to an imported subclass of the expected base class."""
    if not value or "." in value:
        return ""
    bases = []
    for line in lines:
        sub = _SUBTYPES.match(line)
        if sub:
            bases = _TYPE.findall(sub.group(1))
    names: set[str] = set()
    for base in bases:
        module, _, name = base.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except Exception:  # a base we cannot import: nothing to suggest from
            continue
        todo = list(cls.__subclasses__()) if isinstance(cls, type) and cls is not type(None) else []
        while todo:
            c = todo.pop()
            names.add(c.__name__)
            todo.extend(c.__subclasses__())
    close = difflib.get_close_matches(value, sorted(names), n=1)
    return f"; did you mean `{close[0]}`?" if close else ""
