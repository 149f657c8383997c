"""The edit journal: every acknowledged edit and rollback, durable before the reply is sent.

Layout of a journal directory (one event per sequence number ``seq`` = 1, 2, 3, ...)::

    journal/
      LOCK                          flock'd by the one server that owns the journal
      00000001.edit.safetensors     the EditDelta factors (``EditDelta.to_tensors()``)
      00000001.json                 the event record (the commit point)
      00000002.json                 a rollback event (no tensors)
      quarantine/                   entries moved aside by ``skip`` (``--skip-corrupt``)

Writing an event: the tensors go to ``*.tmp``, are fsync'd and atomically renamed; then the
record goes the same way, then the directory is fsync'd. A record is acknowledged only after
all of that, so a crash leaves either nothing or a complete entry (plus ``*.tmp`` leftovers
and tensor files without a record, which were never acknowledged and are removed at start-up).
A write that fails without a crash (``OSError``: a full disk) removes what it wrote and
re-raises, leaving the journal as it was.

Each record carries ``checksum`` (sha256 of its canonical JSON without that field) and, for an
edit, ``delta_sha256`` (sha256 of the tensor file). At start-up every entry is verified; a
torn, corrupt or missing entry raises ``JournalCorruptError`` naming it, unless its sequence
number is in ``skip``, in which case its files are moved to ``quarantine/`` and it is ignored.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

__all__ = [
    "EditJournal",
    "JournalCorruptError",
    "JournalEntry",
    "JournalLockedError",
    "active_entries",
    "utc_now",
]

FORMAT = 1
_RECORD = re.compile(r"^(\d{8})\.json$")
_DELTA = re.compile(r"^(\d{8})\.edit\.safetensors$")


class JournalCorruptError(RuntimeError):
    """The journal holds entries that cannot be trusted; ``problems`` maps seq -> reason."""

    def __init__(self, directory: Path, problems: dict[int, str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  entry {seq:08d}: {why}" for seq, why in sorted(problems.items()))
        skips = " ".join(f"--skip-corrupt {seq}" for seq in sorted(problems))
        super().__init__(
            f"journal {directory} has {len(problems)} untrustworthy entr{'y' if len(problems) == 1 else 'ies'}:\n"
            f"{lines}\nrefusing to start; to move them to {directory / 'quarantine'} and start without "
            f"them, pass {skips}"
        )


class JournalLockedError(RuntimeError):
    """Another process holds the journal's LOCK file."""


def utc_now() -> str:
    """The current time, RFC 3339 in UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record_checksum(record: Mapping[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "checksum"}
    return _sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``path.tmp``: write, fsync, rename (fsync of the dir by the caller).
    A failed write (a full disk: ``OSError``) removes the ``.tmp`` and re-raises."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class JournalEntry:
    """One event read from (or written to) the journal. ``record`` is the JSON record as stored.

    Edit records hold: ``edit_id, prompt, target, rephrases, provenance, idempotency_key,
    created_at, logprob_before, logprob_after, latency_ms, norm, delta_provenance,
    delta_file, delta_sha256``. Rollback records hold ``edit_ids``, ``to_version`` (or null)
    and ``created_at``. Every record has ``format, seq, op, checksum``."""

    seq: int
    op: str  # "edit" | "rollback"
    record: dict[str, Any] = field(repr=False)

    @property
    def edit_id(self) -> str:
        return self.record["edit_id"]


def active_entries(entries: list[JournalEntry]) -> list[JournalEntry]:
    """The edit entries still active after all rollback events, in the order they were applied."""
    rolled_back = {i for e in entries if e.op == "rollback" for i in e.record["edit_ids"]}
    return [e for e in entries if e.op == "edit" and e.edit_id not in rolled_back]


class EditJournal:
    """An append-only, fsync'd journal of edit and rollback events in ``directory``.

    Opening verifies every entry (see the module docstring) and takes an exclusive lock on
    ``directory/LOCK`` (``JournalLockedError`` when another process holds it). ``entries``
    lists the trusted events in order; ``notes`` says what start-up cleaned up or skipped.
    ``read_only=True`` inspects a journal (even one a running server holds): no lock, nothing
    removed or moved, corrupt entries raise unless skipped, and appending is refused; a follower
    replica reads it this way and picks up the owner's new events with ``read_new``/``adopt``.
    """

    def __init__(self, directory: str | Path, *, skip: Collection[int] = (), read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        self._lock_file = None
        if read_only:
            if not self.directory.is_dir():
                raise FileNotFoundError(f"journal directory {self.directory} does not exist")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.directory / "LOCK", "a+b")  # noqa: SIM115 (held open for the lifetime)
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                self._lock_file.close()
                raise JournalLockedError(
                    f"journal {self.directory} is in use by another process (LOCK is held)"
                ) from err
        self.notes: list[str] = []
        self.entries: list[JournalEntry] = []
        try:
            self._load(set(int(s) for s in skip))
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- reading
    def _verify(self, seq: int, path: Path) -> tuple[dict[str, Any] | None, str | None]:
        """Parse and check one record; returns ``(record, None)`` or ``(None, reason)``."""
        try:
            record = json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return None, f"{path.name} is not valid JSON ({err}); torn or overwritten"
        if not isinstance(record, dict):
            return None, f"{path.name} is not a JSON object"
        if record.get("checksum") != _record_checksum(record):
            return None, f"{path.name}: checksum mismatch (record was modified or damaged)"
        if record.get("seq") != seq:
            return None, f"{path.name}: field seq={record.get('seq')!r} does not match the file name"
        if record.get("format") != FORMAT:
            return None, f"{path.name}: unknown format {record.get('format')!r} (this server reads {FORMAT})"
        op = record.get("op")
        if op == "edit":
            delta_path = self.directory / str(record.get("delta_file", ""))
            if not delta_path.is_file():
                return None, f"{path.name}: its tensor file {delta_path.name} is missing"
            if _sha256_bytes(delta_path.read_bytes()) != record.get("delta_sha256"):
                return None, f"{delta_path.name}: sha256 does not match the record (damaged tensors)"
        elif op != "rollback":
            return None, f"{path.name}: unknown op {op!r}"
        return record, None

    def _load(self, skip: set[int]) -> None:
        quarantine = self.directory / "quarantine"
        quarantined = set()
        if quarantine.is_dir():
            quarantined = {
                int(m.group(1)) for p in quarantine.iterdir() if (m := re.match(r"^(\d{8})\.", p.name))
            }
        records: dict[int, Path] = {}
        deltas: dict[int, Path] = {}
        for p in sorted(self.directory.iterdir()):
            if p.name.endswith(".tmp"):
                if not self.read_only:
                    p.unlink()
                    self.notes.append(f"removed {p.name}: an unfinished write (never acknowledged)")
            elif m := _RECORD.match(p.name):
                records[int(m.group(1))] = p
            elif m := _DELTA.match(p.name):
                deltas[int(m.group(1))] = p
        for seq, p in sorted(deltas.items()):
            if seq not in records and seq > max(records, default=0) and not self.read_only:
                p.unlink()
                self.notes.append(
                    f"removed {p.name}: tensors without a record (crash before commit, never acknowledged)"
                )
        problems: dict[int, str] = {}
        last = max(records, default=0)
        for seq in range(1, last + 1):
            if seq in quarantined and seq not in records:
                continue
            if seq not in records:
                problems[seq] = f"{seq:08d}.json is missing (entries {seq - 1} and {seq + 1} exist)"
                continue
            record, why = self._verify(seq, records[seq])
            if why is not None:
                problems[seq] = why
            else:
                assert record is not None
                self.entries.append(JournalEntry(seq, record["op"], record))
        for seq, p in deltas.items():
            if seq not in records and seq <= last and seq not in problems:
                problems[seq] = f"{p.name} has no record {seq:08d}.json"
        fatal = {s: w for s, w in problems.items() if s not in skip}
        if fatal:
            raise JournalCorruptError(self.directory, fatal)
        for seq, why in sorted(problems.items()):
            if self.read_only:
                self.notes.append(f"skipped entry {seq:08d} ({why})")
                continue
            quarantine.mkdir(exist_ok=True)
            for p in (records.get(seq), deltas.get(seq)):
                if p is not None and p.exists():
                    shutil.move(str(p), quarantine / p.name)
            self.notes.append(f"skipped entry {seq:08d} ({why}); its files are in {quarantine}")
        if problems and not self.read_only:
            _fsync_dir(self.directory)
        self._next_seq = max(last, max(quarantined, default=0)) + 1

    @property
    def last_seq(self) -> int:
        """Sequence number of the last event written (0 for an empty journal); the weight version."""
        return self._next_seq - 1

    def read_new(self) -> list[JournalEntry]:
        """A read-only journal (a follower replica's): the events the owner wrote after ``last_seq``,
        verified, in order. They join ``entries`` only through ``adopt``, so a follower that cannot
        apply one reads it again next time. An event still being written (its record not yet
        renamed into place) is not there yet; a damaged one raises ``JournalCorruptError``."""
        if not self.read_only:
            raise RuntimeError(f"journal {self.directory}: read_new is for read-only journals (followers)")
        new: list[JournalEntry] = []
        seq = self.last_seq + 1
        while (path := self.directory / f"{seq:08d}.json").is_file():
            record, why = self._verify(seq, path)
            if why is not None:
                raise JournalCorruptError(self.directory, {seq: why})
            assert record is not None
            new.append(JournalEntry(seq, record["op"], record))
            seq += 1
        return new

    def adopt(self, entry: JournalEntry) -> None:
        """A follower applied ``entry`` (from ``read_new``): it is now the last event of ``entries``."""
        if entry.seq != self.last_seq + 1:
            raise ValueError(f"entry {entry.seq} does not follow version {self.last_seq}")
        self.entries.append(entry)
        self._next_seq = entry.seq + 1

    def load_tensors(self, entry: JournalEntry) -> dict[str, torch.Tensor]:
        """The EditDelta tensors of an edit entry (as given to ``append_edit``)."""
        tensors = {}
        with safe_open(str(self.directory / entry.record["delta_file"]), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                tensors[key] = f.get_tensor(key)
        return tensors

    # ----------------------------------------------------------------- writing
    def _check_writable(self) -> None:
        if self.read_only or self._lock_file is None or self._lock_file.closed:
            raise RuntimeError(f"journal {self.directory} is {'read-only' if self.read_only else 'closed'}")

    def _commit(self, record: dict[str, Any], written: tuple[Path, ...] = ()) -> JournalEntry:
        """Write ``record`` (the commit point). If that fails (``OSError``: a full disk, an I/O
        error), the record and the files ``written`` for it are removed, so the journal is as
        before the call, and the error is re-raised: the event was not acknowledged."""
        record["checksum"] = _record_checksum(record)
        data = json.dumps(record, sort_keys=True, indent=1).encode()
        path = self.directory / f"{record['seq']:08d}.json"
        try:
            _write_atomic(path, data)
            _fsync_dir(self.directory)
        except OSError:
            for p in (path, *written):
                p.unlink(missing_ok=True)
            raise
        entry = JournalEntry(record["seq"], record["op"], record)
        self.entries.append(entry)
        self._next_seq += 1
        return entry

    def append_edit(self, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> JournalEntry:
        """Durably store one edit: ``tensors`` (``EditDelta.to_tensors()``) and its ``record`` fields
        (``edit_id`` required). Returns the entry once it is on disk (fsync'd and renamed)."""
        self._check_writable()
        if "edit_id" not in record:
            raise ValueError("an edit record needs an edit_id")
        seq = self._next_seq
        delta_file = f"{seq:08d}.edit.safetensors"
        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
        _write_atomic(self.directory / delta_file, data)
        full = {
            **dict(record),
            "format": FORMAT,
            "seq": seq,
            "op": "edit",
            "delta_file": delta_file,
            "delta_sha256": _sha256_bytes(data),
        }
        return self._commit(full, written=(self.directory / delta_file,))

    def append_rollback(self, edit_ids: list[str], to_version: int | None = None) -> JournalEntry:
        """Durably record that ``edit_ids`` were rolled back (by id, or by ``to_version``)."""
        self._check_writable()
        record = {
            "format": FORMAT,
            "seq": self._next_seq,
            "op": "rollback",
            "edit_ids": list(edit_ids),
            "to_version": to_version,
            "created_at": utc_now(),
        }
        return self._commit(record)

    def close(self) -> None:
        """Release the LOCK (also released by the OS when the process dies)."""
        if self._lock_file is not None and not self._lock_file.closed:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()

    def __enter__(self) -> EditJournal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
