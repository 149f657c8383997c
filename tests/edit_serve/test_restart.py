"""The `edit-serve` command in a subprocess: kill -9 right after an acknowledged edit, restart,
and nothing acknowledged is lost (bitwise); a corrupt journal refuses to start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from serve_process import ServerProcess, serve_env, wait_journal_free

from edit_serve import EditClient, EditJournal, SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "restart-token"


def _serve_args(artifacts, journal) -> list[str]:
    return ["--model", str(artifacts.model_dir), "--editor", str(artifacts.editor_dir), "--journal", str(journal),
            "--port", "0"]  # fmt: skip


def test_kill_9_after_an_acknowledged_edit_then_restart(tiny_artifacts, tmp_path, replay_digest) -> None:
    journal = tmp_path / "journal"
    args = [*_serve_args(tiny_artifacts, journal), "--token", TOKEN]
    (pa, ta), (pb, tb), (pc, tc) = tiny_artifacts.prompts[:3]
    server = ServerProcess(args)
    try:
        with EditClient(server.address, token=TOKEN) as c:
            a = c.edit(pa, ta, idempotency_key="a")
            b = c.edit(pb, tb, idempotency_key="b")
            digest_ab = c.health(weights_digest=True).weights_sha256
            edited = c.generate(pc, SamplingParams(max_new_tokens=6))
            last = c.edit(pc, tc, idempotency_key="c")  # acknowledged ...
            server.kill()  # ... and the server dies at once
    finally:
        server.kill()
    wait_journal_free(journal)

    server = ServerProcess(args)
    try:
        with EditClient(server.address, token=TOKEN) as c:
            h = c.health(weights_digest=True)
            assert h.version == 3 and h.active_edits == 3
            assert [e.edit_id for e in c.list_edits()] == [a.edit_id, b.edit_id, last.edit_id]
            assert h.weights_sha256 == replay_digest(
                tiny_artifacts.model_dir, tiny_artifacts.editor_dir, journal
            )
            retry = c.edit(pc, tc, idempotency_key="c")  # the client retries: applied once
            assert retry.replayed and retry.edit_id == last.edit_id and c.health().version == 3
            c.rollback(edit_id=last.edit_id)
            assert c.health(weights_digest=True).weights_sha256 == digest_ab
            assert c.generate(pc, SamplingParams(max_new_tokens=6)).text == edited.text
    except AssertionError as err:
        raise AssertionError(f"{err}\n--- restarted server log ---\n{''.join(server.lines[-60:])}") from err
    finally:
        server.kill()


def test_corrupt_journal_refuses_to_start(tiny_artifacts, tmp_path) -> None:
    journal = tmp_path / "journal"
    with EditJournal(journal) as j:
        j.append_rollback([])  # a valid entry 1
        j.append_rollback([])  # entry 2, damaged below
    rec = journal / "00000002.json"
    rec.write_text(rec.read_text()[:-20])  # torn write
    out = subprocess.run(
        [sys.executable, "-m", "edit_serve", *_serve_args(tiny_artifacts, journal)],
        capture_output=True,
        text=True,
        env=serve_env(),
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "entry 00000002" in out.stderr and "--skip-corrupt 2" in out.stderr
    assert rec.exists() and not (journal / "quarantine").exists()  # nothing was moved or lost


def test_cli_refuses_directories_without_model_or_editor(tiny_artifacts, tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edit_serve",
            "--model",
            str(empty),
            "--editor",
            str(tiny_artifacts.model_dir),
        ],
        capture_output=True,
        text=True,
        env=serve_env(),
        timeout=60,
    )
    assert out.returncode == 2
    assert "no config.json" in out.stderr and "no editor.safetensors" in out.stderr


def test_cli_help_lists_the_options() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edit_serve", "--help"],
        capture_output=True,
        text=True,
        env=serve_env(),
        timeout=60,
    )
    assert out.returncode == 0
    for option in (
        "--model",
        "--editor",
        "--journal",
        "--host",
        "--port",
        "--num-gpus",
        "--token",
        "--skip-corrupt",
    ):
        assert option in out.stdout


def test_default_paths_are_runs_default(tmp_path) -> None:
    """Without --model/--editor the command looks in runs/default (here: runs the default job,
    which we replace by a fake `edit-train` that fails, to check it is called)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "edit-train"
    fake.write_text(f"#!/bin/sh\necho ran > {tmp_path / 'called'}\nexit 3\n")
    fake.chmod(0o755)
    env = serve_env()
    env["PATH"] = f"{fake_bin}{os.pathsep}{env.get('PATH', '')}"
    out = subprocess.run(
        [sys.executable, "-m", "edit_serve"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=tmp_path,
    )
    assert (tmp_path / "called").exists(), out.stdout + out.stderr
    assert out.returncode == 3 and "runs/default" in out.stdout
    shutil.rmtree(fake_bin)
