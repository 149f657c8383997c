"""Several replicas on one journal (``--replicas``), without Ray: a leader ``EditService``, followers on
the same journal read-only, and the front's ``ReplicaSet`` over ``LocalBackend``s. Every write
must be on every serving replica when it is acknowledged, with equal weights digests; a read with
``min_version`` never sees an older version; a follower that cannot apply an edit makes the Edit
fail with no replica keeping it; a dead follower blocks neither reads nor writes and catches up
when it is back. ``test_replicas_live.py`` runs the same with Ray Serve and a killed replica."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from edit_serve import EditClient, EditItem, SamplingParams, ServeError, weights_digest
from edit_serve.backend import LocalBackend, serving
from edit_serve.replicas import ReplicaSet

GREEDY = SamplingParams(max_new_tokens=4)


@pytest.fixture
def replicas(tiny_artifacts, serve_dirs, tmp_path):
    """``replicas(n) -> [leader, follower, ...]`` on one journal; closed at the end."""
    made = []

    def make(n: int = 2):
        journal = tmp_path / "journal"
        leader = serve_dirs(tiny_artifacts.model_dir, tiny_artifacts.editor_dir, journal)
        followers = [
            serve_dirs(tiny_artifacts.model_dir, tiny_artifacts.editor_dir, journal, follower=True)
            for _ in range(n - 1)
        ]
        made.extend([leader, *followers])
        return [leader, *followers]

    yield make
    for s in made:
        s.close()


def _digests(services) -> list[str]:
    return [weights_digest(s.model) for s in services]


def test_every_write_is_on_every_replica_when_acknowledged(replicas, tiny_artifacts) -> None:
    services = replicas(3)
    base = _digests(services)[0]
    (p0, t0), (p1, t1) = tiny_artifacts.prompts[:2]
    with serving(*services) as port, EditClient(f"127.0.0.1:{port}") as client:
        first = client.edit(p0, t0)
        second = client.edit_many([EditItem(p1, t1)])
        assert (first.replicas, second.replicas) == (3, 3)
        assert [s.version for s in services] == [second.version] * 3
        digests = _digests(services)
        assert len(set(digests)) == 1 and digests[0] != base
        health = client.health(weights_digest=True)
        assert (health.status, health.replicas, health.weights_sha256) == ("SERVING", 3, digests[0])
        for _ in range(6):  # round-robin: every replica answers, none older than the edit
            assert client.generate(p0, GREEDY, min_version=second.version).version == second.version
        assert {e.edit_id for e in client.list_edits()} == {first.edit_id, second.edit_id}
        undo = client.rollback(edit_id=first.edit_id)
        assert undo.replicas == 3 and [s.version for s in services] == [undo.version] * 3
        assert [s.get_edit(first.edit_id).status for s in services] == ["rolled_back"] * 3
        assert len(set(_digests(services))) == 1
        client.rollback(to_version=0)
        assert _digests(services) == [base] * 3


def test_a_follower_refuses_writes_and_syncs_from_the_journal(
    replicas, tiny_artifacts, replay_digest
) -> None:
    leader, follower = replicas(2)
    prompt, target = tiny_artifacts.prompts[0]
    with pytest.raises(ServeError) as err:
        follower.edit(EditItem(prompt, target))
    assert err.value.code == "FAILED_PRECONDITION" and "writes go to the leader" in err.value.message
    with pytest.raises(ServeError):
        follower.rollback(to_version=0)
    edited = leader.edit(EditItem(prompt, target))
    assert follower.version == 0  # nothing is pushed: the follower reads the journal when asked
    assert follower.sync() == edited.version
    assert weights_digest(follower.model) == weights_digest(leader.model)
    assert weights_digest(follower.model) == replay_digest(
        tiny_artifacts.model_dir, tiny_artifacts.editor_dir, leader.journal.directory
    )


def test_min_version_reads_your_writes_on_a_lagging_follower(replicas, tiny_artifacts) -> None:
    leader, follower = replicas(2)
    prompt, target = tiny_artifacts.prompts[0]
    before = follower.generate(prompt, GREEDY).text
    edited = leader.edit(EditItem(prompt, target))  # the follower has not synced
    assert follower.generate(prompt, GREEDY).version == 0  # no min_version: what it has
    seen = follower.generate(prompt, GREEDY, min_version=edited.version)
    assert seen.version == edited.version
    assert seen.text == leader.generate(prompt, GREEDY).text
    stream = follower.generate_stream(prompt, GREEDY, min_version=edited.version)
    assert all(v >= edited.version for _, v in stream)
    with pytest.raises(ServeError) as err:
        follower.generate(prompt, GREEDY, min_version=edited.version + 5)
    assert err.value.code == "OUT_OF_RANGE" and "ahead of the journal" in err.value.message
    leader.rollback(edit_id=edited.edit_id)
    assert follower.generate(prompt, GREEDY, min_version=edited.version + 1).text == before


def test_a_follower_that_cannot_apply_an_edit_fails_it_on_every_replica(
    replicas, tiny_artifacts, monkeypatch
) -> None:
    leader, follower = replicas(2)
    base = weights_digest(leader.model)
    (p0, t0), (p1, t1) = tiny_artifacts.prompts[:2]

    def refuse(edit_id, delta):
        raise ValueError("injected: out of memory")

    with serving(leader, follower) as port, EditClient(f"127.0.0.1:{port}") as client:
        monkeypatch.setattr(follower, "_apply", refuse)
        with pytest.raises(grpc.RpcError) as err:
            client.edit(p0, t0)
        assert err.value.code() == grpc.StatusCode.ABORTED
        assert "replica 1" in err.value.details() and "injected: out of memory" in err.value.details()
        assert _digests([leader, follower]) == [base, base]  # no replica keeps it
        assert leader.version == follower.version == 2  # the edit and its rollback, both journaled
        assert client.list_edits() == []
        monkeypatch.undo()
        ok = client.edit(p1, t1)
        assert ok.replicas == 2 and len(set(_digests([leader, follower]))) == 1


class Unplugged:
    """A replica backend that can be cut off: every call fails as a dead Ray actor's would."""

    def __init__(self, backend: LocalBackend) -> None:
        self.backend, self.down = backend, False

    async def call(self, method, **kwargs):
        if self.down:
            raise ConnectionError("replica process is gone")
        return await self.backend.call(method, **kwargs)

    async def stream(self, **kwargs):
        if self.down:
            raise ConnectionError("replica process is gone")
        async for item in self.backend.stream(**kwargs):
            yield item


def test_a_dead_follower_blocks_nothing_and_catches_up_when_back(replicas, tiny_artifacts) -> None:
    leader, follower = replicas(2)
    (p0, t0), (p1, t1) = tiny_artifacts.prompts[:2]
    plug = Unplugged(LocalBackend(follower))
    group = ReplicaSet([LocalBackend(leader), plug], sync_timeout_s=5, probe_every_s=0.05)

    async def scenario() -> None:
        plug.down = True
        edited = await group.call("edit", items=[EditItem(p0, t0)])
        assert edited.replicas == 1 and group.serving == [True, False]
        for _ in range(4):  # every read is answered (by the leader)
            g = await group.call("generate", prompt=p0, sampling=GREEDY, min_version=edited.version)
            assert g.version == edited.version
        assert (await group.call("health")).replicas == 1
        plug.down = False  # the replica is back (a restarted one replays the journal first)
        await asyncio.sleep(0.1)
        await group.call("generate", prompt=p0, sampling=GREEDY)  # a read starts the probe
        for _ in range(100):
            if group.serving[1]:
                break
            await asyncio.sleep(0.05)
        assert group.serving == [True, True] and follower.version == edited.version
        again = await group.call("edit", items=[EditItem(p1, t1)])
        assert again.replicas == 2
        health = await group.call("health", with_digest=True)
        assert (health.status, health.replicas) == ("SERVING", 2)

    asyncio.run(scenario())
    assert len(set(_digests([leader, follower]))) == 1


def test_a_follower_started_after_edits_replays_them_before_it_serves(
    replicas, tiny_artifacts, serve_dirs, tmp_path
) -> None:
    (leader,) = replicas(1)
    for p, t in tiny_artifacts.prompts[:3]:
        leader.edit(EditItem(p, t))
    leader.rollback(edit_id=leader.list_edits()[1].edit_id)
    late = serve_dirs(
        tiny_artifacts.model_dir, tiny_artifacts.editor_dir, tmp_path / "journal", follower=True
    )
    try:
        assert late.version == leader.version == 4
        assert weights_digest(late.model) == weights_digest(leader.model)
        assert [e.edit_id for e in late.list_edits()] == [e.edit_id for e in leader.list_edits()]
    finally:
        late.close()


def test_read_new_sees_an_event_only_once_its_record_is_committed(replicas, tiny_artifacts) -> None:
    leader, follower = replicas(2)
    prompt, target = tiny_artifacts.prompts[0]
    leader.edit(EditItem(prompt, target))
    journal = leader.journal.directory
    (journal / "00000002.edit.safetensors").write_bytes(b"tensors of an edit being written")
    (journal / "00000002.json.tmp").write_bytes(b"{half a record")
    new = follower.journal.read_new()
    assert [e.seq for e in new] == [1]
    assert follower.sync() == 1 and follower.journal.read_new() == []
    with pytest.raises(RuntimeError, match="read-only"):
        leader.journal.read_new()
