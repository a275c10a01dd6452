"""The one JSONL reader: line numbers as an editor counts them, errors that name the file and the line.

Every JSONL file factsmith reads (requests, corpora, protected facts, the ledger) goes through here; each
caller passes its own error class and judges the fields itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

JSON_WHITESPACE = " \t\r\n"  # all that JSON counts as whitespace (RFC 8259); Python's str.isspace() knows more


def lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of each line of JSONL ``text`` that is not blank.

    Lines end at ``\\n`` only, and one ``\\r`` before it is dropped (CRLF files). ``str.splitlines`` would also
    break at U+2028, U+2029, U+0085, form feed, vertical tab and U+001C-U+001E: the first three may stand
    in a JSON string as they are, so a valid record would be cut in two, and any of them would shift every
    later line number. A line of JSON whitespace only is blank; any other character (a lone form feed)
    makes it a line for the JSON parser to judge."""
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip(JSON_WHITESPACE):
            yield n, line


def json_error(e: json.JSONDecodeError) -> str:
    """The parser's message and column, and what is wrong when the character there is whitespace to Python
    but not to JSON (a form feed, U+0085 or U+2028 outside a string), which the message alone hides."""
    ch = e.doc[e.pos:e.pos + 1]
    why = f": U+{ord(ch):04X} is not whitespace in JSON" if ch.isspace() and ch not in JSON_WHITESPACE else ""
    return f"{e.msg} (column {e.colno}){why}"


def read_text(path: str | Path, error: type[Exception], what: str) -> str:
    """A file's UTF-8 text; ``error`` names the file (``what``: 'the ledger', 'the corpus file', ...)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read {what}: {e}") from None


def objects(path: str | Path, text: str, error: type[Exception], comments: bool = False
            ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each record of JSONL ``text`` read from ``path``; a line that is not a JSON
    object raises ``error`` naming the file and line. ``comments``: skip lines that start with ``#``."""
    for n, raw in lines(text):
        if comments and raw.lstrip().startswith("#"):
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise error(f"{path}:{n}: invalid JSON: {json_error(e)}") from None
        if not isinstance(row, dict):
            raise error(f"{path}:{n}: expected a JSON object, found {type(row).__name__}")
        yield n, row
