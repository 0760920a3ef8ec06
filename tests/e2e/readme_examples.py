"""The README's code examples, extracted: every fenced block in a language we can run.

A block runs unless the line just before its opening fence (blank lines between allowed) is

    <!-- example: not run (REASON) -->

which says why (it starts a server, needs a file or host that only the reader has, ...). Blocks
with no language (command synopses, trees) are text, not examples. Use the marker sparingly: a
block that can run against the served toy model should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LANGUAGES = {
    "sh": "shell",
    "bash": "shell",
    "shell": "shell",
    "console": "shell",
    "python": "python",
    "py": "python",
    "js": "node",
    "javascript": "node",
    "mjs": "node",
}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_SKIP = re.compile(r"^\s*<!--\s*example:\s*not run\s*\((?P<reason>[^)]+)\)\s*-->\s*$")


@dataclass(frozen=True)
class Example:
    """One fenced block: where it is, its language, its code, and why it is not run (if so)."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # "shell", "python" or "node"
    code: str
    not_run: str | None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}-{self.language}"


def extract(path: Path) -> list[Example]:
    """Every runnable-language fenced block of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        language = LANGUAGES.get(info)
        if language is None:
            continue
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        skip = _SKIP.match(lines[j]) if j >= 0 else None
        out.append(
            Example(
                path=path,
                line=start + 1,
                language=language,
                code="\n".join(body) + "\n",
                not_run=skip["reason"].strip() if skip else None,
            )
        )
    return out
