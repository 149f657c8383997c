"""How the gRPC front reaches an ``EditService``: in-process (``LocalBackend``) or through a Ray
Serve application's deployment handle (``RayBackend``, the leader's way to its followers). Both
offer the same two async calls:

- ``await backend.call(method, **kwargs)`` -> the service method's result (``ServeError`` on refusal)
- ``async for step, version in backend.stream(**kwargs)`` -> ``GenerateStream`` pieces

``LocalBackend`` runs the blocking service methods in a thread pool, so the event loop never
waits on the readers-writer lock or on the model. It is also what the Ray deployment uses
inside its replica. ``serving(service, ...)`` puts the gRPC front over ``LocalBackend``s without
Ray (tests, and machines where Ray is not installed); several replicas are a ``ReplicaSet`` of
backends (``edit_serve.replicas``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from edit_serve.generation import GenerationStep
from edit_serve.service import EditService, ServeError

__all__ = ["LocalBackend", "RayBackend", "serving"]

_DONE = object()


class LocalBackend:
    """An ``EditService`` in this process, called from asyncio through thread pools.

    Three pools, so that threads blocked on the readers-writer lock can never starve the
    threads that would release it: writes (Edit, Rollback) run one at a time on their own
    thread (further writes queue without holding a thread), generations on a pool one larger
    than the concurrency limit, and the cheap queries (List, Get, Health) on their own pool.
    """

    def __init__(self, service: EditService) -> None:
        self.service = service
        pool = concurrent.futures.ThreadPoolExecutor
        self.writes = pool(max_workers=1, thread_name_prefix="edit-serve-write")
        self.generations = pool(
            max_workers=service.limits.max_concurrent_generations + 1,
            thread_name_prefix="edit-serve-generate",
        )
        self.queries = pool(max_workers=2, thread_name_prefix="edit-serve-query")
        self._pool_of = {
            "edit": self.writes,
            "rollback": self.writes,
            "sync": self.writes,
            "generate": self.generations,
            "classify": self.generations,
            "list_edits": self.queries,
            "get_edit": self.queries,
            "health": self.queries,
        }

    async def call(self, method: str, **kwargs: Any) -> Any:
        if method not in self._pool_of:
            raise ServeError("UNIMPLEMENTED", f"unknown method {method!r}")
        fn = getattr(self.service, method)
        return await asyncio.wrap_future(self._pool_of[method].submit(lambda: fn(**kwargs)))

    async def stream(self, **kwargs: Any) -> AsyncIterator[tuple[GenerationStep, int]]:
        pool = self.generations
        it = await asyncio.wrap_future(pool.submit(lambda: self.service.generate_stream(**kwargs)))
        pending: concurrent.futures.Future | None = None
        try:
            while True:
                pending = pool.submit(next, it, _DONE)
                item = await asyncio.wrap_future(pending)
                pending = None
                if item is _DONE:
                    return
                yield item
        finally:
            # Close once a pending ``next`` is done (it then returns the piece it was waiting
            # for): either way the request leaves the decode loop and frees its slot.
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: it.close())
            else:
                it.close()

    def close(self) -> None:
        for pool in (self.writes, self.generations, self.queries):
            pool.shutdown(wait=False, cancel_futures=True)
        self.service.close()


def _unwrap(reply: tuple) -> Any:
    if reply[0] == "ok":
        return reply[1]
    raise ServeError(reply[1], reply[2])


class RayBackend:
    """The deployment of the Ray Serve application named ``app`` (see ``edit_serve.deployment``),
    through its ``DeploymentHandle``, looked up at the first call that finds the application
    deployed (a restarted leader's front can be up before its followers are)."""

    def __init__(self, app: str) -> None:
        self.app = app
        self._handle: Any = None

    @property
    def handle(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_app_handle(self.app)  # raises while the app is not deployed
        return self._handle

    async def call(self, method: str, **kwargs: Any) -> Any:
        return _unwrap(await self.handle.call.remote(method, kwargs))

    async def stream(self, **kwargs: Any) -> AsyncIterator[tuple[GenerationStep, int]]:
        responses = self.handle.options(stream=True).stream.remote(kwargs)
        try:
            async for reply in responses:
                if reply[0] != "ok":
                    raise ServeError(reply[1], reply[2])
                yield reply[1], reply[2]
        finally:
            with contextlib.suppress(Exception):
                responses.cancel()  # client went away: stop generating in the replica


@contextlib.contextmanager
def serving(*services: EditService, **front: Any) -> Iterator[int]:
    """Serve ``services`` through the gRPC front (``front``: ``start_grpc_server``'s options; a free
    port on 127.0.0.1 by default) from a background event loop, without Ray; yields the port.
    Several services are replicas (``edit_serve.replicas.ReplicaSet``): the first is the leader,
    the others follow its journal read-only. On exit the front stops and the backends' threads
    are joined (the services stay open)."""
    from edit_serve.front import start_front
    from edit_serve.replicas import ReplicaSet

    front.setdefault("port", 0)
    backends = [LocalBackend(s) for s in services]
    backend = backends[0] if len(backends) == 1 else ReplicaSet(backends)
    try:
        running = start_front(backend, **front)
        try:
            yield running.port
        finally:
            running.stop(grace=0.5)
    finally:
        for b in backends:
            for pool in (b.writes, b.generations, b.queries):
                pool.shutdown(wait=True)
