"""Replace one benchmark's section of bench/RESULTS.md (between its begin and end markers), keeping the others."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(begin: str, end: str, lines: list[str], path: Path = RESULTS) -> None:
    """``lines`` start with ``begin`` and end with ``end``; an existing section is replaced in place, a new one is
    appended."""
    text = path.read_text()
    block = "\n".join(lines)
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
