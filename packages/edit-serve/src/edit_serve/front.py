"""The gRPC front (grpc.aio): the only network listener of the sidecar.

- binds 127.0.0.1 by default; any other address must be passed explicitly (``host``);
- with a ``token``, ``Edit`` and ``Rollback`` need ``authorization: Bearer <token>`` in the call
  metadata (``UNAUTHENTICATED`` otherwise); reads (Generate, Classify, List, Get, Health) stay open;
- optional TLS (``tls_cert`` + ``tls_key``, PEM files);
- requests above ``limits.max_message_bytes`` are refused by gRPC with ``RESOURCE_EXHAUSTED``;
- a request that is not valid protobuf (e.g. invalid UTF-8 in a string) gets ``INVALID_ARGUMENT``
  instead of gRPC's generic error, because we deserialize ourselves;
- every refusal (``ServeError``) becomes its status code; anything unexpected becomes
  ``INTERNAL`` with the exception's text, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from edit_serve.proto import modeledit_pb2 as pb
from edit_serve.requests import EditItem, SamplingParams, ServeError, ServeLimits
from edit_serve.results import EditInfo

__all__ = ["SERVICE_NAME", "BackgroundFront", "ModelEditServicer", "start_front", "start_grpc_server"]

SERVICE_NAME = "modeledit.v1.ModelEditService"
log = logging.getLogger("edit_serve")

_STATUS = {"active": pb.EDIT_STATUS_ACTIVE, "rolled_back": pb.EDIT_STATUS_ROLLED_BACK}


class _BadRequest:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _safe_deserializer(message_type: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return _BadRequest(f"request is not a valid {message_type.DESCRIPTOR.full_name}: {err}")

    return parse


def _edit_info(info: EditInfo) -> pb.EditInfo:
    return pb.EditInfo(**{**asdict(info), "status": _STATUS[info.status]})


def sampling_of(request: pb.GenerateRequest) -> SamplingParams:
    """The request's sampling fields (``seed`` unset = ``None``)."""
    return SamplingParams(
        max_new_tokens=int(request.max_new_tokens),
        temperature=float(request.temperature),
        top_p=float(request.top_p),
        seed=int(request.seed) if request.HasField("seed") else None,
        stop=tuple(request.stop),
    )


class ModelEditServicer:
    """``modeledit.v1.ModelEditService`` over a backend (``LocalBackend`` or ``RayBackend``)."""

    def __init__(self, backend: Any, token: str | None = None) -> None:
        self.backend = backend
        self.token = token or None

    async def _fail(self, context: grpc.aio.ServicerContext, err: BaseException) -> None:
        if isinstance(err, ServeError):
            code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL)
            await context.abort(code, err.message)
        log.exception("unexpected error in edit-serve")
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(err).__name__}: {err}")

    async def _check(self, request: Any, context: grpc.aio.ServicerContext, *, write: bool = False) -> None:
        if isinstance(request, _BadRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        if write and self.token is not None:
            meta = dict(context.invocation_metadata() or ())
            given = meta.get("authorization", "")
            if not (
                given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), self.token.encode())
            ):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this server needs 'authorization: Bearer <token>' metadata for Edit and Rollback",
                )

    async def _call(self, context: grpc.aio.ServicerContext, method: str, **kwargs: Any) -> Any:
        try:
            return await self.backend.call(method, **kwargs)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await self._fail(context, err)

    async def Edit(self, request: pb.EditRequest, context: grpc.aio.ServicerContext) -> pb.EditReply:
        await self._check(request, context, write=True)
        if request.edits and (request.prompt or request.target or request.rephrases):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "give prompt/target/rephrases or edits, not both"
            )
        items = [EditItem(x.prompt, x.target, tuple(x.rephrases), x.subject) for x in request.edits] or [
            EditItem(request.prompt, request.target, tuple(request.rephrases), request.subject)
        ]
        r = await self._call(
            context,
            "edit",
            items=items,
            idempotency_key=request.idempotency_key,
            provenance=dict(request.provenance),
        )
        return pb.EditReply(**asdict(r))

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateReply:
        await self._check(request, context)
        r = await self._call(
            context,
            "generate",
            prompt=request.prompt,
            sampling=sampling_of(request),
            min_version=int(request.min_version),
        )
        return pb.GenerateReply(**asdict(r))

    async def GenerateStream(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext):
        await self._check(request, context)
        try:
            async for step, version in self.backend.stream(
                prompt=request.prompt, sampling=sampling_of(request), min_version=int(request.min_version)
            ):
                yield pb.GenerateChunk(**asdict(step), version=version)
        except grpc.aio.AbortError:
            raise
        except Exception as err:
            await self._fail(context, err)

    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyReply:
        await self._check(request, context)
        r = await self._call(context, "classify", text=request.text, min_version=int(request.min_version))
        return pb.ClassifyReply(**asdict(r))

    async def Rollback(
        self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.RollbackReply:
        await self._check(request, context, write=True)
        which = request.WhichOneof("what")
        if which is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "RollbackRequest needs edit_id or to_version"
            )
        kwargs = (
            {"edit_id": request.edit_id} if which == "edit_id" else {"to_version": int(request.to_version)}
        )
        return pb.RollbackReply(**asdict(await self._call(context, "rollback", **kwargs)))

    async def ListEdits(
        self, request: pb.ListEditsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListEditsReply:
        await self._check(request, context)
        infos = await self._call(context, "list_edits", include_rolled_back=request.include_rolled_back)
        return pb.ListEditsReply(edits=[_edit_info(i) for i in infos])

    async def GetEdit(self, request: pb.GetEditRequest, context: grpc.aio.ServicerContext) -> pb.EditInfo:
        await self._check(request, context)
        return _edit_info(await self._call(context, "get_edit", edit_id=request.edit_id))

    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthReply:
        await self._check(request, context)
        return pb.HealthReply(
            **asdict(await self._call(context, "health", with_digest=request.weights_digest))
        )


_METHODS = {
    "Edit": ("unary", pb.EditRequest, pb.EditReply),
    "Generate": ("unary", pb.GenerateRequest, pb.GenerateReply),
    "GenerateStream": ("stream", pb.GenerateRequest, pb.GenerateChunk),
    "Classify": ("unary", pb.ClassifyRequest, pb.ClassifyReply),
    "Rollback": ("unary", pb.RollbackRequest, pb.RollbackReply),
    "ListEdits": ("unary", pb.ListEditsRequest, pb.ListEditsReply),
    "GetEdit": ("unary", pb.GetEditRequest, pb.EditInfo),
    "Health": ("unary", pb.HealthRequest, pb.HealthReply),
}


def _handler(servicer: ModelEditServicer) -> grpc.GenericRpcHandler:
    handlers = {}
    for name, (kind, request_type, reply_type) in _METHODS.items():
        make = (
            grpc.unary_unary_rpc_method_handler if kind == "unary" else grpc.unary_stream_rpc_method_handler
        )
        handlers[name] = make(
            getattr(servicer, name),
            request_deserializer=_safe_deserializer(request_type),
            response_serializer=reply_type.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


async def start_grpc_server(
    backend: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    limits: ServeLimits | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start the front on ``host:port`` (``port`` 0 = a free one). Returns the server and its port.

    Raises ``ValueError`` when only one of ``tls_cert``/``tls_key`` is given, ``RuntimeError`` when
    the address cannot be bound."""
    limits = limits or ServeLimits()
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both tls_cert and tls_key")
    size = int(limits.max_message_bytes)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", max(size, 4 << 20)),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=4 * limits.max_concurrent_generations + 16,
    )
    server.add_generic_rpc_handlers([_handler(ModelEditServicer(backend, token))])
    address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    try:
        if tls_cert is not None and tls_key is not None:
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(address, creds)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as err:
        raise RuntimeError(f"cannot listen on {address}: {err}") from err
    if not bound:
        raise RuntimeError(f"cannot listen on {address}")
    await server.start()
    return server, bound


@dataclass
class BackgroundFront:
    """The front serving from its own event loop in a daemon thread (:func:`start_front`)."""

    port: int
    server: grpc.aio.Server
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    def stop(self, grace: float = 1.0) -> None:
        """Stop answering (in-flight calls get ``grace`` seconds), then end the loop and its thread."""
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(grace=grace), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


def start_front(backend: Any, **options: Any) -> BackgroundFront:
    """:func:`start_grpc_server` (``options`` are its keywords) on a new event loop in a daemon
    thread, so that a synchronous caller (a Ray Serve replica's constructor, a test) can serve;
    raises what starting raised, with the thread ended."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="edit-serve-front")
    thread.start()
    try:
        server, port = asyncio.run_coroutine_threadsafe(start_grpc_server(backend, **options), loop).result(
            60
        )
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        raise
    return BackgroundFront(port, server, loop, thread)
