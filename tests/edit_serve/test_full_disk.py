"""A full disk during a journal write: the Edit (or Rollback) is refused with RESOURCE_EXHAUSTED,
neither the weights nor the journal change, reads keep being served, and once space is free the
sidecar edits again and a restart replays to the same weights.

The journal lives on a small tmpfs the test mounts (needs root and mount rights; skipped with the
reason otherwise). Two places to fail: the edit's tensors do not fit, or they fit and the record
(the commit point) does not.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("transformers")

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs mounted at ``tmp_path / "disk"``, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount: Path, leave_pages: int) -> Path:
    """Fill ``mount`` until a write fails with ENOSPC, then free ``leave_pages`` pages."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * PAGE)
        except OSError as err:
            assert err.errno == errno.ENOSPC, err
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave_pages * PAGE))
    return filler


def _journal_files(journal: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(journal.iterdir()) if p.is_file()
    }


def first_delta(journal: Path) -> str:
    return next(p.name for p in sorted(journal.iterdir()) if p.name.endswith(".edit.safetensors"))


@pytest.mark.parametrize("fails_at", ["tensors", "record"])
def test_full_disk_refuses_the_edit_and_changes_nothing(
    make_service, tiny_artifacts, small_disk, fails_at
) -> None:
    from edit_serve import EditItem, ServeError

    journal = small_disk / "journal"
    service = make_service(journal)
    (p0, t0), (p1, t1), (p2, t2) = tiny_artifacts.prompts[:3]
    first = service.edit(EditItem(p0, t0))
    delta_pages = -(-(journal / first_delta(journal)).stat().st_size // PAGE)
    filler = _fill(small_disk, leave_pages=0 if fails_at == "tensors" else delta_pages)
    files, health = _journal_files(journal), service.health(with_digest=True)
    before = service.generate(p1)

    with pytest.raises(ServeError) as refused:
        service.edit(EditItem(p1, t1))
    assert refused.value.code == "RESOURCE_EXHAUSTED"
    assert "nothing was changed" in refused.value.message and "No space left" in refused.value.message
    assert _journal_files(journal) == files  # no record, no tensors, no .tmp left behind
    assert service.health(with_digest=True) == health  # weights and version as before
    assert service.generate(p1) == before  # reads are served, from the same version
    if fails_at == "tensors":
        with pytest.raises(ServeError, match="could not store the rollback") as refused:
            service.rollback(edit_id=first.edit_id)
        assert refused.value.code == "RESOURCE_EXHAUSTED"
        assert _journal_files(journal) == files and service.health(with_digest=True) == health

    filler.unlink()
    second = service.edit(EditItem(p2, t2))
    assert second.version == first.version + 1  # the refused call took no version
    live = service.health(with_digest=True)
    service.close()
    restarted = make_service(journal)
    assert restarted.health(with_digest=True).weights_sha256 == live.weights_sha256
    assert [e.edit_id for e in restarted.list_edits()] == [first.edit_id, second.edit_id]


def test_full_disk_over_grpc_answers_resource_exhausted(make_service, tiny_artifacts, small_disk) -> None:
    import grpc

    from edit_serve import EditClient
    from edit_serve.backend import serving

    service = make_service(small_disk / "journal")
    prompt, target = tiny_artifacts.prompts[0]
    _fill(small_disk, leave_pages=0)
    with serving(service) as port, EditClient(f"127.0.0.1:{port}") as client:
        with pytest.raises(grpc.RpcError) as refused:
            client.edit(prompt, target)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "journal could not store the edit" in refused.value.details()
        health = client.health()
        assert (health.status, health.version, health.active_edits) == ("SERVING", 0, 0)
        assert client.generate(prompt).version == 0
