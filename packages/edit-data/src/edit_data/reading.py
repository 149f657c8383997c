"""Reading editing-dataset files for the format converters: file -> ``(location, object)`` rows
(JSON lines or a JSON array, UTF-8 checked) and field validators that raise ``FieldError``
naming the field, what was expected and what was found (the reader adds file and location).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from edit_data.errors import _MISSING, FieldError, RecordError, SkippedRecord

# ----------------------------------------------------------------------------- reading files


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise RecordError(str(path), "", None, "UTF-8 text, found a UTF-16 byte-order mark")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RecordError(
            str(path),
            f"line {line}",
            None,
            f"UTF-8 text, found byte 0x{data[e.start]:02x} at offset {e.start}",
        ) from None
    if not text.strip():
        raise RecordError(str(path), "", None, "at least one record, the file is empty")
    return text


def _json_lines(path: Path, text: str, skip_bad: bool, skipped: list[SkippedRecord]) -> list[tuple[str, Any]]:
    if text.lstrip().startswith("["):
        raise RecordError(
            str(path),
            "line 1",
            None,
            "JSON lines (one object per line), found a JSON array (is the format right?)",
        )
    rows: list[tuple[str, Any]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            error = RecordError(str(path), f"line {n}", None, f"a JSON object ({e.msg})", line)
        else:
            if isinstance(obj, dict):
                rows.append((f"line {n}", obj))
                continue
            error = RecordError(str(path), f"line {n}", None, "a JSON object", obj)
        if not skip_bad:
            raise error
        skipped.append(SkippedRecord(f"line {n}", "not a JSON object"))
    return rows


def _json_document(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            raise RecordError(
                str(path),
                f"line {e.lineno}",
                None,
                "one JSON document (array), found JSON lines (is the format right?)",
            ) from None
        raise RecordError(
            str(path), f"line {e.lineno} column {e.colno}", None, f"valid JSON ({e.msg})"
        ) from None


def _json_array(path: Path, data: Any, *, allow_object: bool = False) -> list[tuple[str, Any]]:
    if isinstance(data, dict) and allow_object:
        data = [data]
    if not isinstance(data, list):
        found = "a JSON object (JSON lines with one line?)" if isinstance(data, dict) else type(data).__name__
        raise RecordError(str(path), "", None, f"a JSON array of objects, found {found}")
    if not data:
        raise RecordError(str(path), "", None, "at least one record, the JSON array is empty")
    return [(f"index {i}", obj) for i, obj in enumerate(data)]


# ----------------------------------------------------------------------------- field access


def _field(obj: Any, key: str, name: str) -> Any:
    if not isinstance(obj, dict):
        raise FieldError(name.rsplit(".", 1)[0] if "." in name else None, "a JSON object", obj)
    if key not in obj:
        raise FieldError(name, "a value, the field is missing")
    return obj[key]


def _str(obj: Any, key: str, name: str | None = None, *, empty_ok: bool = False) -> str:
    name = name or key
    value = _field(obj, key, name)
    if not isinstance(value, str):
        raise FieldError(name, "a string", value)
    if not empty_ok and not value.strip():
        raise FieldError(name, "a non-empty string", value)
    return value


def _opt(obj: dict, key: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FieldError(key, expected, value)
    return value


def _str_list(obj: Any, key: str, name: str | None = None, *, required: bool = True) -> list[str]:
    name = name or key
    if not required and isinstance(obj, dict) and obj.get(key) is None:
        return []
    value = _field(obj, key, name)
    if not isinstance(value, list):
        raise FieldError(name, "a list of strings", value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(f"{name}[{i}]", "a string", item)
    return value


def _int(obj: Any, key: str, name: str | None = None) -> int:
    name = name or key
    value = _field(obj, key, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(name, "an integer", value)
    return value


def _dict(obj: Any, key: str, name: str | None = None) -> dict:
    name = name or key
    value = _field(obj, key, name)
    if not isinstance(value, dict):
        raise FieldError(name, "a JSON object", value)
    return value


def _dedupe(texts: list[str], drop: str) -> list[str]:
    seen = {drop.strip()}
    out = []
    for t in texts:
        if t.strip() and t.strip() not in seen:
            seen.add(t.strip())
            out.append(t)
    return out


def _gold_answers(obj: dict) -> list[str]:
    output = _field(obj, "output", "output")
    if not isinstance(output, list):
        raise FieldError("output", "a list of objects with 'answer'", output)
    return [_str(item, "answer", f"output[{i}].answer") for i, item in enumerate(output)]
