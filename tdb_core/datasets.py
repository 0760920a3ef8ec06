"""Text datasets: JSONL files of ``{"text": ...}`` objects (what ``tdb toy corpus`` writes), plain
text (one document per line, or per paragraph when blank lines separate them), or in-memory lists.
Used by SAE training and activation-record mining."""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tdb_core.errors import InvalidArgumentError, NotFoundError


class PlainTextSplit(str, enum.Enum):
    AUTO = "auto"  # paragraphs when the file has blank lines, else lines
    LINE = "line"
    PARAGRAPH = "paragraph"


def _read_jsonl(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgumentError(
                    f"{path}:{line_no} is not valid JSON ({exc.msg})"
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InvalidArgumentError(
                    f'{path}:{line_no} has no string field "text"; each JSONL line must be an '
                    'object like {"text": "..."}'
                )
            yield obj["text"]


def _read_plain(path: Path, split: PlainTextSplit) -> Iterator[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if split is PlainTextSplit.AUTO:
        split = (
            PlainTextSplit.PARAGRAPH if any(not ln.strip() for ln in lines) else PlainTextSplit.LINE
        )
    if split is PlainTextSplit.LINE:
        yield from (ln for ln in lines if ln.strip())
        return
    paragraph: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []


def iter_texts(
    dataset: str | os.PathLike[str] | Iterable[str],
    *,
    plain_text_split: PlainTextSplit = PlainTextSplit.AUTO,
) -> Iterator[str]:
    """Documents of a dataset: a path (``.jsonl``/``.json`` lines, else plain text) or an
    iterable of str. A ``str`` is always a path; pass a list for in-memory texts."""
    if isinstance(dataset, str | os.PathLike):
        path = Path(dataset)
        if not path.is_file():
            raise NotFoundError(f"dataset file {str(path)!r} does not exist (or is not a file)")
        try:
            if path.suffix.lower() in (".jsonl", ".json"):
                yield from _read_jsonl(path)
            else:
                yield from _read_plain(path, PlainTextSplit(plain_text_split))
        except UnicodeDecodeError as exc:
            raise InvalidArgumentError(
                f"dataset file {str(path)!r} is not UTF-8 text ({exc.reason})"
            ) from None
        return
    for i, text in enumerate(dataset):
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"dataset item {i} is a {type(text).__name__}; every item must be a str"
            )
        yield text
