"""EditJournal: durable append, verification at start-up, quarantine of skipped entries, lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edit_serve import EditJournal, JournalCorruptError, JournalLockedError
from edit_serve.journal import active_entries


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "h.0.mlp.u": torch.randn(3, 8, generator=g),
        "h.0.mlp.delta": torch.randn(3, 4, generator=g),
        "h.0.mlp.alpha": torch.tensor(0.1, dtype=torch.float64),
    }


def _fill(directory: Path) -> list[str]:
    with EditJournal(directory) as j:
        ids = []
        for i in range(3):
            e = j.append_edit(_tensors(i), {"edit_id": f"e{i}", "prompt": f"p{i}", "target": "t"})
            ids.append(e.edit_id)
        j.append_rollback(["e1"])
    return ids


def test_append_and_reopen_round_trip(tmp_path: Path) -> None:
    _fill(tmp_path)
    with EditJournal(tmp_path) as j:
        assert [(e.seq, e.op) for e in j.entries] == [(1, "edit"), (2, "edit"), (3, "edit"), (4, "rollback")]
        assert j.last_seq == 4
        assert [e.edit_id for e in active_entries(j.entries)] == ["e0", "e2"]
        loaded = j.load_tensors(j.entries[2])
        for k, v in _tensors(2).items():
            assert torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype
        assert j.notes == []
        e = j.append_edit(_tensors(9), {"edit_id": "e9"})
        assert e.seq == 5
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tmp") == []


def test_second_writer_is_refused_but_read_only_inspection_works(tmp_path: Path) -> None:
    _fill(tmp_path)
    with EditJournal(tmp_path):
        with pytest.raises(JournalLockedError, match="in use"):
            EditJournal(tmp_path)
        ro = EditJournal(tmp_path, read_only=True)
        assert ro.last_seq == 4
        with pytest.raises(RuntimeError, match="read-only"):
            ro.append_rollback(["e0"])


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: (d / "00000002.json").write_text('{"seq": 2, "op": "ed'), "not valid JSON"),
        (
            lambda d: (d / "00000002.json").write_text(
                (d / "00000002.json").read_text().replace('"prompt": "p1"', '"prompt": "p1!"')
            ),
            "checksum mismatch",
        ),
        (lambda d: (d / "00000002.edit.safetensors").write_bytes(b"\0" * 40), "sha256 does not match"),
        (lambda d: (d / "00000002.edit.safetensors").unlink(), "is missing"),
        (lambda d: (d / "00000002.json").unlink(), "00000002.json is missing"),
    ],
    ids=["torn-record", "edited-record", "damaged-tensors", "missing-tensors", "missing-record"],
)
def test_untrustworthy_entry_refuses_start_until_skipped(tmp_path: Path, damage, reason: str) -> None:
    _fill(tmp_path)
    damage(tmp_path)
    with pytest.raises(JournalCorruptError, match=reason) as info:
        EditJournal(tmp_path)
    assert list(info.value.problems) == [2]
    assert "--skip-corrupt 2" in str(info.value)
    with EditJournal(tmp_path, skip=[2]) as j:
        assert [e.seq for e in j.entries] == [1, 3, 4]
        assert any("skipped entry 00000002" in n for n in j.notes)
        assert j.append_rollback(["e0"]).seq == 5
    assert (tmp_path / "quarantine").is_dir()
    with EditJournal(tmp_path) as j:  # once quarantined, the gap is trusted
        assert [e.seq for e in j.entries] == [1, 3, 4, 5]


def test_unacknowledged_leftovers_are_removed(tmp_path: Path) -> None:
    _fill(tmp_path)
    (tmp_path / "00000005.json.tmp").write_text("{")
    (tmp_path / "00000005.edit.safetensors").write_bytes(b"partial")
    with EditJournal(tmp_path) as j:
        assert j.last_seq == 4
        assert len(j.notes) == 2
    assert not (tmp_path / "00000005.json.tmp").exists()
    assert not (tmp_path / "00000005.edit.safetensors").exists()


def test_records_are_self_describing_json(tmp_path: Path) -> None:
    _fill(tmp_path)
    rec = json.loads((tmp_path / "00000001.json").read_text())
    assert rec["op"] == "edit" and rec["seq"] == 1 and rec["delta_file"] == "00000001.edit.safetensors"
    assert len(rec["delta_sha256"]) == 64 and len(rec["checksum"]) == 64
