"""Errors and skip reports for malformed input files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MISSING = object()


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordError(ValueError):
    """A malformed input: names the file, the line or array index, the field, what was expected
    and what was found. ``location`` is e.g. ``"line 12"``, ``"index 3"`` or ``""`` (whole file)."""

    def __init__(self, file: str, location: str, field: str | None, expected: str, found: Any = _MISSING):
        self.file, self.location, self.field, self.expected = str(file), location, field, expected
        self.found = None if found is _MISSING else found
        where = f"{self.file}:{location}" if location else self.file
        what = f"field {field!r}: " if field else ""
        got = "" if found is _MISSING else f", got {_short(found)}"
        super().__init__(f"{where}: {what}expected {expected}{got}")


class FieldError(ValueError):
    """Raised by a record converter; the reader adds the file and location (-> RecordError)."""

    def __init__(self, field: str | None, expected: str, found: Any = _MISSING):
        self.field, self.expected, self.found = field, expected, found
        super().__init__(f"{field}: expected {expected}")


class Unusable(Exception):
    """A well-formed record that cannot be used for editing (e.g. zsRE with no alternatives):
    always skipped and reported, never fatal."""


@dataclass(frozen=True)
class SkippedRecord:
    """One record left out of a build: where it was and why."""

    location: str
    reason: str
