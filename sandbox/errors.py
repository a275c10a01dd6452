"""Errors raised by the sandbox package.

Every error says which file, which line (or record) and which field was wrong, so an operator can fix
the input without reading code.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base class for sandbox errors."""


class FactFileError(SandboxError):
    """A facts file is missing, unreadable or holds a bad record.

    ``line`` is the 1-based line of a JSONL file or the 1-based record of a JSON array; ``field`` is the
    record field at fault (``None`` when the whole record or file is).
    """

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class BuildError(SandboxError):
    """The sandbox model could not be built (bad configuration, output directory in the way)."""
