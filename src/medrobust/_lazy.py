"""Lazy package attributes (PEP 562): a public name is imported from its module the first time it is used.

So ``import medrobust`` and the command line's ``--help`` and ``list`` pay for torch, MONAI, SciPy or
matplotlib only where a command or a call needs them (bench/startup.py measures it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any


def load(module: str) -> Any:
    """Import ``module`` (a dotted name) and return it. Through ``__import__``, unlike ``importlib.import_module``, so
    ``python -X importtime`` shows what a lazy import costs and nests what it imports under it."""
    __import__(module)
    return sys.modules[module]


def lazy_getattr(package: str, attributes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``attributes`` maps a public name to the module that defines it
    (``{"build_report": "medrobust.report.build"}``); any other name that is a submodule of ``package`` is
    imported as such, as an eager ``import`` of it in ``__init__`` would have made it an attribute. The value is
    stored on the package, so the next use is a plain attribute lookup."""

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):  # dunder probes (copy, pickle, inspect): never a submodule of ours
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = attributes.get(name)
        if module is not None:
            value = getattr(load(module), name)
        else:
            try:
                value = load(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
