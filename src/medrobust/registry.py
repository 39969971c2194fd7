"""One small typed registry used for attacks, corruptions, models, datasets and tasks."""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import numbers
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePath
from typing import Any, Generic, TypeVar, Union, cast

from medrobust._lazy import load

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders. ``build("pgd", steps=10)`` calls the registered builder.

    A builder is registered as an object (``register``) or as the ``"module:attribute"`` that defines it
    (``register_lazy``): then its module is imported on first ``get``/``build``/``describe``, never by ``names()``,
    so listing the names costs no import of the module (nor of what it imports).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            target = self._lazy.get(name)
            if target is not None and target == f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}":
                del self._lazy[name]  # the module a lazy entry names registers its own builder when imported
            if name in self._items or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"module:attribute"`` (e.g. ``"medrobust.data.nifti:build_nifti"``), imported on first
        use."""
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"{self.kind} {name!r}: target {target!r} must look like 'module:attribute'")
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        if name in self._lazy:
            target = self._lazy[name]
            module, _, attribute = target.partition(":")
            obj = getattr(load(module), attribute)
            if name in self._lazy:  # the module did not register it itself
                del self._lazy[name]
                self._items[name] = obj
        if name not in self._items:
            raise KeyError(unknown_name_message(self.kind, name, self.names()))
        return self._items[name]

    def check(self, name: str, /, **params: Any) -> Any:
        """The builder of ``name`` after checking ``params`` without calling it: an unknown parameter is a
        ValueError naming the valid ones ("did you mean"), a value of the wrong type one naming the parameter, the
        value and the type its annotation asks for ("pgd: steps=1.5 must be an integer")."""
        builder = self.get(name)
        valid = parameter_names(builder)
        for key in params:
            if valid is not None and key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{name} has no parameter {key!r}{hint} Valid: {', '.join(valid)}")
        hints = parameter_types(builder)
        for key, value in params.items():
            if key in hints and not fits(value, hints[key]):
                raise ValueError(f"{name}: {key}={short_repr(value)} must be {expected(hints[key])}")
        return builder

    def build(self, name: str, /, **params: Any) -> Any:
        """Call the builder after :meth:`check`; a ValueError of the builder is prefixed with ``name``."""
        builder = self.check(name, **params)
        try:
            return builder(**params)
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: {err}") from None
        except ValueError as err:
            if type(err) is not ValueError or str(err).startswith(f"{name}"):
                raise
            raise ValueError(f"{name}: {err}") from None  # the message says which builder refused the value

    def describe(self, name: str) -> tuple[str, list[tuple[str, str, str]]]:
        """What ``name`` is and takes, from its builder: (the first paragraph of its docstring, [(parameter,
        type, default)]) in signature order; parameters the caller supplies (split, the network's channels and
        classes) are left out."""
        import inspect

        builder = self.get(name)
        doc = inspect.getdoc(builder) or ""
        summary = " ".join(doc.split("\n\n")[0].split())
        rows = []
        for p in inspect.signature(cast(Callable[..., Any], builder)).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in SUPPLIED:
                continue
            kind = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
            default = "required" if p.default is p.empty else repr(p.default)
            rows.append((p.name, str(kind).replace("typing.", ""), default))
        return summary, rows

    def names(self) -> list[str]:
        return sorted([*self._items, *self._lazy])

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy


# builder parameters the library fills in itself, not the user (hidden by Registry.describe)
SUPPLIED = ("split", "in_channels", "num_classes", "spatial_dims")


def parameter_names(builder: Any) -> list[str] | None:
    """Keyword parameters a builder accepts (None when it takes ``**kwargs`` or has no signature)."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


@functools.cache
def parameter_types(builder: Any) -> dict[str, Any]:
    """The resolved type annotations of a builder's parameters (empty where they cannot be resolved)."""
    try:
        target = builder.__init__ if inspect.isclass(builder) else builder
        return dict(typing.get_type_hints(target))
    except Exception:  # an annotation that does not resolve: no checks, the builder validates itself
        return {}


_SCALARS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML, JSON or a ``key=value`` option) has the type ``hint`` asks for. Only what can
    be told for sure is checked: scalars (bool, int, float, str, None, paths) and lists or tuples of them; any
    other annotation (tensors, mappings of anything, classes) accepts every value and leaves it to the builder."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, arm) for arm in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if hint in (int, float) and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or array from Python code: its number
    if hint is int:
        return not isinstance(value, bool) and isinstance(value, numbers.Integral)
    if hint is float:
        return not isinstance(value, bool) and isinstance(value, numbers.Real)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list, Sequence) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        args = typing.get_args(hint)
        if args and args[0] is Any:
            return True  # a sequence of anything: the builder decides (transfer takes one source or several)
        if isinstance(value, str):
            return str in args  # a string is a sequence of strings, nothing else
        if not isinstance(value, (list, tuple)):
            return hasattr(value, "__array__")  # an array or tensor: the builder converts it
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping)
    return True


def expected(hint: Any) -> str:
    """``hint`` in words: "an integer", "a list of integers", "a number or none"."""
    if hint is type(None) or hint is None:
        return "none"
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(expected(arm) for arm in typing.get_args(hint)))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path"
    if origin in (tuple, list, Sequence) or (isinstance(origin, type) and issubclass(origin, Sequence)):
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(expected(a) for a in args)})"
        if not args or args[0] is Any:
            return "a list"
        word = expected(args[0])
        plural = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}
        return f"a list of {plural.get(word, word)}"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value may be a long list from a file)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_line(err: Any, rename: Callable[[str], str] | None = None) -> str:
    """A pydantic ValidationError as one line: each error's key path (through ``rename``, e.g. to the command-line
    option that set it), what was expected and the value given; several errors are joined by "; "."""
    parts = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        name = rename(path) if rename is not None and path else path
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("value_error", "missing") or not path else f" (got {short_repr(e['input'])})"
        parts.append(f"{name}: {msg[:1].lower()}{msg[1:]}{got}" if name else msg)
    return "; ".join(parts)


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} Valid: {', '.join(valid)}"


def parse_value(text: str) -> Any:
    """Parse a CLI parameter value: numbers, booleans, None, lists; anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in {"true", "false"}:
        return lowered == "true"
    if lowered in {"none", "null"}:
        return None
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        pass
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]") and "[" not in inner[1:-1]:  # [a, b]: a list of bare words
        return [parse_value(item) for item in inner[1:-1].split(",") if item.strip()]
    return text.strip()


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``"name:key=value,key=value"`` into ``("name", {"key": value})``.

    >>> parse_spec("pgd:eps=0.03,steps=10,norm=l2")
    ('pgd', {'eps': 0.03, 'steps': 10, 'norm': 'l2'})
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"spec {spec!r} has no name; expected 'name' or 'name:key=value,...'")
    params: dict[str, Any] = {}
    if rest.strip():
        for part in rest.split(","):
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"spec {spec!r}: parameter {part!r} is not of the form key=value")
            if key.strip() in params:
                raise ValueError(f"spec {spec!r}: parameter {key.strip()!r} is given twice; give it once")
            params[key.strip()] = parse_value(value)
    return name, params
