"""Several replicas that agree on every edit: ``ReplicaSet``, the front's backend for ``--replicas N``.

Replica 0 is the leader: it owns the journal (holds its LOCK), computes each edit, journals it
(fsync) and applies it. Replicas 1..N-1 are followers: ``EditService`` on the same journal opened
read-only, which apply the leader's events from the journal's own files (``EditService.sync``),
so every replica holds the bytes a restart replay would, and the weights digests are equal.
Each replica is any backend with ``call``/``stream`` (``RayBackend`` over one Serve deployment per
replica, or ``LocalBackend`` in tests). The rules:

- **Writes** (Edit, Rollback) go to the leader, one at a time. Once it has journaled and applied
  the event, every serving follower syncs; the reply is sent after that, and its ``replicas``
  says how many replicas serve the new version. The journal is the source of truth: a leader
  that dies after journaling but before replying has the event after its restart, and a retried
  Edit with the same ``idempotency_key`` answers ``replayed``.
- **A follower that refuses an edit** (cannot apply it): the leader rolls the edit back (a
  journaled Rollback), the followers sync past both events (an edit rolled back in the same
  batch is never applied), and the Edit fails ``ABORTED`` naming the replica and its reason. No
  replica keeps the edit; the version moves on by two. A follower that refuses a Rollback stops
  serving until a probe finds it in step again.
- **A replica that does not answer** is marked down: it gets no reads, no write waits on it, and
  it is not counted in ``replicas``. Liveness checks (``health`` within ``probe_timeout_s``, each
  replica at most every ``probe_every_s``, started by the traffic itself) find a dead one; a sync
  slower than ``sync_timeout_s`` does too. Once a down replica answers a check again, it syncs
  under the write lock and serves again if it reached the leader's version. A restarted replica
  replays the journal before its deployment reports ready, so it never serves an old version.
  (Ray Serve queues a call to an application whose replica died until a new one is up, instead
  of failing it, so a read sent there before the check notices waits for the restart.)
- **Reads** (Generate, GenerateStream, Classify, ListEdits, GetEdit) go round-robin to serving
  replicas; one that fails with anything but a refusal is marked down and the read goes to the
  next (a stream only before its first piece). ``min_version`` is the replica's to honour: one
  behind it syncs first, so a client reads its own writes on any replica.
- **Health** asks every serving replica: ``replicas`` is how many answered; with the digest it is
  taken between writes and the status is ``DIVERGED`` when the digests differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from edit_serve.requests import ServeError

__all__ = ["ReplicaSet"]

log = logging.getLogger("edit_serve")
WRITES = ("edit", "rollback")


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class ReplicaSet:
    """``replicas[0]`` is the leader; see the module docstring for the rules."""

    def __init__(
        self,
        replicas: Sequence[Any],
        *,
        sync_timeout_s: float = 10.0,
        probe_every_s: float = 1.0,
        probe_timeout_s: float = 2.0,
    ) -> None:
        if not replicas:
            raise ValueError("a ReplicaSet needs at least one replica")
        self.replicas = list(replicas)
        self.serving = [True] * len(self.replicas)
        self.sync_timeout_s = sync_timeout_s
        self.probe_every_s = probe_every_s
        self.probe_timeout_s = probe_timeout_s
        self._writes = asyncio.Lock()
        self._turn = 0
        self._last_check = [0.0] * len(self.replicas)
        self._checks: dict[int, asyncio.Future] = {}

    # ------------------------------------------------------------ bookkeeping
    def _mark_down(self, i: int, why: str) -> None:
        if self.serving[i]:
            log.warning("edit-serve replica %d stops serving: %s", i, why)
        self.serving[i] = False

    def _check_replicas(self) -> None:
        """Start a liveness check (in the background) of each replica not checked for ``probe_every_s``."""
        now = time.monotonic()
        for i in range(len(self.replicas)):
            if i in self._checks or now - self._last_check[i] < self.probe_every_s:
                continue
            self._last_check[i] = now
            task = asyncio.ensure_future(self._check(i))
            self._checks[i] = task
            task.add_done_callback(lambda _, i=i: self._checks.pop(i, None))

    async def _check(self, i: int) -> None:
        """Down if it does not answer; back into service once it answers and has synced to the
        leader's version (under the write lock, so no write moves the leader meanwhile)."""
        try:
            await asyncio.wait_for(self.replicas[i].call("health"), self.probe_timeout_s)
            if self.serving[i]:
                return
            async with self._writes:
                leader = await asyncio.wait_for(self.replicas[0].call("health"), self.sync_timeout_s)
                version = await asyncio.wait_for(self.replicas[i].call("sync"), self.sync_timeout_s)
        except Exception as err:
            self._mark_down(i, f"no answer to a liveness check ({_why(err)})")
            return
        if version >= leader.version:
            log.warning("edit-serve replica %d serves again at version %d", i, version)
            self.serving[i] = True

    def _order(self) -> list[int]:
        """Replicas to try for a read: the serving ones, starting at the next in turn (all of
        them when none is known to serve)."""
        self._check_replicas()
        n = len(self.replicas)
        start, self._turn = self._turn, (self._turn + 1) % n
        order = [(start + k) % n for k in range(n)]
        return [i for i in order if self.serving[i]] or order

    # ------------------------------------------------------------ reads
    async def _read(self, ask: Callable[[Any], Awaitable[Any]]) -> Any:
        why = "no replica"
        for i in self._order():
            try:
                return await ask(self.replicas[i])
            except ServeError:
                raise
            except Exception as err:
                why = f"replica {i}: {_why(err)}"
                self._mark_down(i, why)
        raise ServeError("UNAVAILABLE", f"no replica could answer ({why})")

    async def call(self, method: str, **kwargs: Any) -> Any:
        if method in WRITES:
            return await self._write(method, kwargs)
        if method == "health":
            return await self._health(**kwargs)
        return await self._read(lambda r: r.call(method, **kwargs))

    async def stream(self, **kwargs: Any) -> AsyncIterator[Any]:
        why = "no replica"
        for i in self._order():
            started = False
            try:
                async for item in self.replicas[i].stream(**kwargs):
                    started = True
                    yield item
                return
            except ServeError:
                raise
            except Exception as err:
                why = f"replica {i}: {_why(err)}"
                self._mark_down(i, why)
                if started:
                    raise ServeError("UNAVAILABLE", f"the stream broke off ({why}); retry it") from err
        raise ServeError("UNAVAILABLE", f"no replica could answer ({why})")

    # ------------------------------------------------------------ writes
    async def _sync_followers(self, version: int) -> tuple[int, dict[int, str]]:
        """Sync every serving follower to ``version``: (replicas serving it, refusals by replica)."""

        async def sync(i: int) -> str | bool:
            try:
                reached = await asyncio.wait_for(self.replicas[i].call("sync"), self.sync_timeout_s)
            except ServeError as err:
                return err.message
            except Exception as err:
                self._mark_down(i, _why(err))
                return False
            if reached < version:
                self._mark_down(i, f"at version {reached} after a sync to {version}")
                return False
            return True

        followers = [i for i in range(1, len(self.replicas)) if self.serving[i]]
        results = dict(zip(followers, await asyncio.gather(*(sync(i) for i in followers)), strict=True))
        refused = {i: r for i, r in results.items() if isinstance(r, str)}
        return 1 + sum(r is True for r in results.values()), refused

    async def _write(self, method: str, kwargs: dict[str, Any]) -> Any:
        async with self._writes:
            leader = self.replicas[0]
            try:
                result = await leader.call(method, **kwargs)  # a refusal: nothing changed anywhere
            except ServeError:
                raise
            except Exception as err:
                raise ServeError(
                    "UNAVAILABLE",
                    f"the leader replica (0) did not answer ({_why(err)}); if it journaled the "
                    "write, it holds it after its restart: retry with the same idempotency_key",
                ) from err
            held, refused = await self._sync_followers(result.version)
            if refused and method == "edit" and not result.replayed:
                undo = await leader.call("rollback", edit_id=result.edit_id)
                await self._sync_followers(undo.version)
                reasons = "; ".join(f"replica {i}: {why}" for i, why in sorted(refused.items()))
                raise ServeError(
                    "ABORTED",
                    f"edit {result.edit_id} was not kept because {reasons}. It was rolled back on "
                    f"every replica (version {undo.version}); no replica serves it",
                )
            for i, why in refused.items():
                self._mark_down(i, why)
            self._check_replicas()
            return replace(result, replicas=held)

    # ------------------------------------------------------------ health
    async def _health(self, with_digest: bool = False) -> Any:
        self._check_replicas()
        timeout = self.sync_timeout_s if with_digest else self.probe_timeout_s  # hashing takes a while

        async def ask(i: int) -> Any:
            try:
                return await asyncio.wait_for(
                    self.replicas[i].call("health", with_digest=with_digest), timeout
                )
            except ServeError:
                raise
            except Exception as err:
                self._mark_down(i, _why(err))
                return None

        between_writes = self._writes if with_digest else contextlib.nullcontext()
        async with between_writes:
            asked = [i for i, up in enumerate(self.serving) if up] or list(range(len(self.replicas)))
            infos = [x for x in await asyncio.gather(*(ask(i) for i in asked)) if x is not None]
        if not infos:
            raise ServeError("UNAVAILABLE", "no replica answers")
        diverged = with_digest and len({x.weights_sha256 for x in infos}) > 1
        return replace(infos[0], status="DIVERGED" if diverged else infos[0].status, replicas=len(infos))
