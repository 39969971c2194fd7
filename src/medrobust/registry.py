"""One small typed registry used for attacks, corruptions, models, datasets and tasks."""

from __future__ import annotations

import ast
import difflib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar, cast

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

    def build(self, name: str, /, **params: Any) -> Any:
        """Call the builder; an unknown parameter is a ValueError naming the valid ones ("did you mean")."""
        builder = self.get(name)
        valid = parameter_names(builder)
        for key in params:
            if valid is not None and key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"{name} has no parameter {key!r}{hint} Valid: {', '.join(valid)}")
        try:
            return builder(**params)  # type: ignore[operator]
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: {err}") from None

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
            params[key.strip()] = parse_value(value)
    return name, params
