"""The one error every nftables input problem becomes: where it is, and what is wrong."""

from __future__ import annotations


class NftParseError(ValueError):
    """Bad or unsupported nft input. `line`/`column` are 1-based (0 when not known, as in JSON,
    where `path` says where instead)."""

    def __init__(self, message: str, line: int = 0, column: int = 0, source_line: str | None = None,
                 path: str | None = None) -> None:
        self.message, self.line, self.column, self.path = message, line, column, path
        self.source_line = source_line
        where = f"line {line}, column {column}: " if line else (f"at {path}: " if path else "")
        text = where + message
        if source_line is not None and line:
            text += "\n  " + source_line.replace("\t", " ") + "\n  " + " " * max(column - 1, 0) + "^"
        super().__init__(text)
