"""Reading YAML that someone else wrote: ``yaml.safe_load`` with what a spec never needs refused, so that a
few-kilobyte file cannot expand into gigabytes or silently drop a key.

- aliases (``*name``): a billion-laughs file expands into gigabytes through them; a spec writes values out;
- a key given twice in one mapping: YAML keeps the last one, so the first (a whole ``perturbations:`` list)
  disappears without a word;
- nesting deeper than :data:`MAX_DEPTH` (recursion in the parser and in every reader after it);
- files larger than :data:`MAX_BYTES`.

Each is a :class:`YAMLInputError` (a ValueError) of one line naming the line and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: how deep mappings and lists may nest (a spec needs about 6)
MAX_DEPTH = 32
#: the largest YAML or JSON text read as a spec or a label definition (a spec is a few kilobytes)
MAX_BYTES = 1_000_000


class YAMLInputError(ValueError):
    """YAML (or JSON) text refused before or while it is read; the message is one line."""


class _StrictLoader(yaml.SafeLoader):
    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise YAMLInputError(
                f"line {event.start_mark.line + 1}: the alias *{event.anchor} is not accepted (aliases can expand a "
                "small file into gigabytes); write the value out (yaml.dump writes one for an object that appears "
                "twice: dump a copy)"
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YAMLInputError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the constructor below says so
                break
            if duplicate:
                raise YAMLInputError(
                    f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in one mapping (YAML would keep "
                    "only the last); merge them into one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str = "YAML") -> Any:
    """``text`` parsed as YAML (JSON is YAML too) with aliases, duplicate keys and deep nesting refused; errors
    name ``source``."""
    if len(text) > MAX_BYTES:
        raise YAMLInputError(f"{source}: {len(text):,} characters; a spec or label file is at most {MAX_BYTES:,}")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except YAMLInputError as err:
        raise YAMLInputError(f"{source}: {err}") from None


def read_yaml(path: Path) -> Any:
    """The file at ``path`` through :func:`load_yaml`, its size checked before it is read."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise YAMLInputError(f"{path}: {size:,} bytes; a spec or label file is at most {MAX_BYTES:,}")
    return load_yaml(path.read_text(), str(path))
