"""``edit-serve --replicas 2`` as a user runs it (Ray Serve, one application per replica): edits and
rollbacks reach both replicas before the reply, digests agree with a fresh replay of the journal,
no read is older than its ``min_version``, and a follower killed with SIGKILL neither blocks reads
nor writes, and serves again, caught up, once Serve has restarted it; a killed leader takes the
gRPC front with it, and both are back on the same address once Serve has restarted it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from serve_process import ServerProcess, wait_journal_free

from edit_serve import EditClient, SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GREEDY = SamplingParams(max_new_tokens=4)


def _replica_pid(app: str, server: ServerProcess) -> int:
    """The pid of ``server``'s Serve replica of application ``app`` (Ray names its process after
    it; other sidecars of the test session run replicas of the same name)."""
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:{app}:"], capture_output=True, text=True)
    pids = [int(x) for x in out.stdout.split() if _descends_from(int(x), server.proc.pid)]
    assert len(pids) == 1, f"expected one process for {app}, found {pids}"
    return pids[0]


def _descends_from(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _wait_for(what: str, ok, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := ok():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_replicas_agree_on_every_edit_and_survive_a_killed_follower(
    tiny_artifacts, tmp_path, replay_digest
) -> None:
    journal = tmp_path / "journal"
    args = ["--model", str(tiny_artifacts.model_dir), "--editor", str(tiny_artifacts.editor_dir),
            "--journal", str(journal), "--port", "0", "--replicas", "2"]  # fmt: skip
    (p0, t0), (p1, t1), (p2, t2) = tiny_artifacts.prompts[:3]
    server = ServerProcess(args)

    def replayed() -> str:
        return replay_digest(tiny_artifacts.model_dir, tiny_artifacts.editor_dir, journal)

    try:
        with EditClient(server.address, timeout=120) as c:
            health = c.health(weights_digest=True)
            assert (health.status, health.replicas, health.version) == ("SERVING", 2, 0)
            edited = c.edit(p0, t0)
            assert edited.replicas == 2
            for _ in range(6):  # round-robin over both replicas
                assert c.generate(p0, GREEDY, min_version=edited.version).version >= edited.version
            health = c.health(weights_digest=True)
            assert (health.status, health.replicas) == ("SERVING", 2)
            assert health.weights_sha256 == replayed()

            killed = _replica_pid("edit-serve-replica-1", server)
            os.kill(killed, signal.SIGKILL)
            # Serve would queue calls to the dead replica until its restart; the front's liveness
            # check (here the first Health after the kill) takes it out of service instead.
            assert c.health().replicas == 1
            waits = []
            for _ in range(8):  # reads are answered by the leader, none older than min_version
                start = time.monotonic()
                assert c.generate(p0, GREEDY, min_version=edited.version).version >= edited.version
                waits.append(time.monotonic() - start)
            start = time.monotonic()
            during = c.edit(p1, t1)
            assert during.replicas in (1, 2)  # 2 only if Serve has restarted it already
            assert c.generate(p1, GREEDY, min_version=during.version).version >= during.version
            print(
                f"with a killed follower: reads {max(waits):.2f} s at most, an edit {time.monotonic() - start:.2f} s "
                f"(held by {during.replicas} replica(s))"
            )

            _wait_for("the follower to serve again", lambda: c.health().replicas == 2)
            assert _replica_pid("edit-serve-replica-1", server) != killed  # Serve restarted it
            health = c.health(weights_digest=True)
            assert (health.status, health.version) == ("SERVING", during.version)
            assert health.weights_sha256 == replayed()

            undo = c.rollback(edit_id=edited.edit_id)
            after = c.edit(p2, t2)
            assert (undo.replicas, after.replicas) == (2, 2)
            for _ in range(4):
                assert c.generate(p2, GREEDY, min_version=after.version).version >= after.version
            health = c.health(weights_digest=True)
            assert (health.status, health.replicas, health.version) == ("SERVING", 2, after.version)
            assert health.weights_sha256 == replayed()

            # the front lives in the leader's process: killed with it, it is back on the same
            # address once Serve has restarted the leader, which replays the journal first
            leader = _replica_pid("edit-serve", server)
            os.kill(leader, signal.SIGKILL)

            def serving_again():
                try:
                    h = c.health(weights_digest=True)
                except grpc.RpcError:
                    return None
                return h if h.replicas == 2 else None

            health = _wait_for("the leader's front to answer again", serving_again)
            assert _replica_pid("edit-serve", server) != leader
            assert (health.status, health.version) == ("SERVING", after.version)
            assert health.weights_sha256 == replayed()
            assert c.generate(p2, GREEDY, min_version=after.version).version == after.version
    finally:
        server.kill()
    wait_journal_free(journal)
