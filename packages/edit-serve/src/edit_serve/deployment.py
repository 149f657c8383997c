"""The Ray Serve deployment and the running sidecar (Ray + deployment + gRPC front).

A replica holds the model and the editor; with ``num_gpus = N`` it asks Ray for N GPUs and
the model is split over exactly those (see ``edit_serve.loading``). The same code runs on CPU.
``replicas = N`` runs N full copies, each its own Serve application of one replica (a Serve
handle routes each call to some replica of a deployment and cannot address them all, which
every write must); replica 0 leads and owns the journal, the others follow it read-only, and
the front's ``ReplicaSet`` keeps them in step (``edit_serve.replicas``). The journal directory
must be one file system every replica reads (one host, or a shared mount).

Why our own gRPC front instead of Ray Serve's gRPC proxy: Serve's proxy binds every
interface (``0.0.0.0``) and offers no per-method authentication, so anyone who can reach the
host could edit the model. Our ``grpc.aio`` front binds 127.0.0.1 unless told otherwise,
checks a token on Edit and Rollback, can use TLS, enforces message-size limits, maps every
refusal to a precise status code, and calls the deployment through its handle. Serve's HTTP
proxy is disabled too (``proxy_location="Disabled"``), so the front is the only listener.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edit_serve.loading import UNTRAINED_EDITORS
from edit_serve.requests import ServeError, ServeLimits

__all__ = ["EditServeDeployment", "RunningSidecar", "SidecarSettings", "start_sidecar"]

APP_NAME = "edit-serve"


@dataclass
class SidecarSettings:
    """Everything ``edit-serve`` needs. ``ray_num_gpus`` declares (logical) GPUs to a new local
    Ray instance (``None`` = let Ray detect them); ``num_gpus`` is what the replica asks for.
    ``editor`` is a MendEditor directory or the name of an editor without training (``rome``, ...,
    ``edit_serve.loading.UNTRAINED_EDITORS``), whose key statistics come from ``stats_corpus``."""

    model: str
    editor: str
    journal: str
    host: str = "127.0.0.1"
    port: int = 50051
    num_gpus: int = 0
    token: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    skip_corrupt: list[int] = field(default_factory=list)
    limits: ServeLimits = field(default_factory=ServeLimits)
    ray_num_cpus: int | None = None
    ray_num_gpus: int | None = None
    stats_corpus: str | None = None
    replicas: int = 1
    sync_timeout_s: float = 10.0


def _build_service(settings: SidecarSettings, follower: bool = False):
    from edit_serve.journal import EditJournal
    from edit_serve.loading import load_served
    from edit_serve.service import EditService

    loaded = load_served(
        settings.model, settings.editor, num_gpus=settings.num_gpus, stats_corpus=settings.stats_corpus
    )
    journal = EditJournal(settings.journal, skip=settings.skip_corrupt, read_only=follower)
    for note in journal.notes:
        print(f"[edit-serve] journal: {note}", flush=True)
    try:
        return EditService(
            loaded.model,
            loaded.tokenizer,
            loaded.editor,
            journal,
            settings.limits,
            model_name=str(settings.model),
            device=loaded.device,
        )
    except BaseException:
        journal.close()
        raise


class EditServeDeployment:
    """The replica: one ``EditService`` behind a ``LocalBackend``. Wrapped by ``serve.deployment``
    in ``start_sidecar``. Replies are tagged tuples (``("ok", value)`` / ``("error", code, msg)``)
    so refusals cross Ray as data, not as wrapped exceptions."""

    def __init__(self, settings: dict, follower: bool = False) -> None:
        from edit_serve.backend import LocalBackend

        limits = ServeLimits(**settings.pop("limits"))
        self.settings = SidecarSettings(**settings, limits=limits)
        self.backend = LocalBackend(_build_service(self.settings, follower))

    async def call(self, method: str, kwargs: dict) -> tuple:
        try:
            return ("ok", await self.backend.call(method, **kwargs))
        except ServeError as err:
            return ("error", err.code, err.message)
        except Exception as err:  # the replica survives anything
            return ("error", "INTERNAL", f"{type(err).__name__}: {err}")

    async def stream(self, kwargs: dict):
        try:
            async for step, version in self.backend.stream(**kwargs):
                yield ("ok", step, version)
        except ServeError as err:
            yield ("error", err.code, err.message)
        except Exception as err:
            yield ("error", "INTERNAL", f"{type(err).__name__}: {err}")

    def placement(self) -> dict[str, Any]:
        """Where the replica runs: Ray's GPU ids for it, CUDA_VISIBLE_DEVICES, the model's device."""
        import ray

        return {
            "ray_gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "device": self.backend.service.device,
            "pid": os.getpid(),
        }


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


@dataclass
class RunningSidecar:
    """A started sidecar: ``address`` ("127.0.0.1:PORT"), one deployment handle per replica
    (``handles[0]`` leads), ``stop()``."""

    address: str
    port: int
    handles: list[Any]
    settings: SidecarSettings
    _loop: asyncio.AbstractEventLoop = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _server: Any = field(repr=False)

    def placement(self, replica: int = 0) -> dict[str, Any]:
        return self.handles[replica].placement.remote().result()

    def ask_replica(self, replica: int, method: str, **kwargs: Any) -> Any:
        """One replica's own answer (``EditService.<method>``), bypassing the front: e.g.
        ``ask_replica(1, "health", with_digest=True)``. Raises ``ServeError`` on refusal."""
        from edit_serve.backend import _unwrap

        return _unwrap(self.handles[replica].call.remote(method, kwargs).result())

    def stop(self) -> None:
        """Stop the gRPC front, the Serve application and Ray."""
        import ray
        from ray import serve

        fut = asyncio.run_coroutine_threadsafe(self._server.stop(grace=1.0), self._loop)
        fut.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        serve.shutdown()
        ray.shutdown()


def start_sidecar(settings: SidecarSettings) -> RunningSidecar:
    """Start a local Ray instance, deploy ``EditServeDeployment`` and the gRPC front (in a
    background thread with its own event loop). Raises ``RuntimeError`` with the replica's
    error when the model, editor or journal cannot be loaded (e.g. a corrupt journal)."""
    import ray
    from ray import serve

    from edit_serve.backend import RayBackend
    from edit_serve.front import start_grpc_server
    from edit_serve.replicas import ReplicaSet

    settings = replace(
        settings,
        **{
            name: str(Path(getattr(settings, name)).resolve())
            for name in ("model", "editor", "journal")
            if not (name == "editor" and settings.editor.lower() in UNTRAINED_EDITORS)
        },
    )
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=settings.ray_num_cpus,
            num_gpus=settings.ray_num_gpus,
            include_dashboard=False,
            namespace=APP_NAME,
            log_to_driver=True,
        )
    serve.start(proxy_location="Disabled")
    limits = settings.limits
    if settings.replicas < 1:
        raise ValueError(f"replicas={settings.replicas}: at least one is needed")
    deployment = serve.deployment(
        EditServeDeployment,
        name="EditServeDeployment",
        num_replicas=1,
        max_ongoing_requests=2 * limits.max_concurrent_generations + 8,
        ray_actor_options={"num_gpus": settings.num_gpus, "num_cpus": 0},
        health_check_period_s=10,
        logging_config={"enable_access_log": False},  # one INFO line per Generate is noise
    )
    handles = []
    try:
        for i in range(settings.replicas):  # the leader first: it takes the journal's LOCK
            name = APP_NAME if i == 0 else f"{APP_NAME}-replica-{i}"
            app = deployment.bind(asdict(settings), follower=i > 0)
            handles.append(serve.run(app, name=name, route_prefix=None))
    except Exception as err:
        serve.shutdown()
        ray.shutdown()
        raise RuntimeError(f"edit-serve replica {len(handles)} failed to start: {err}") from err
    backends = [RayBackend(h) for h in handles]
    backend = (
        backends[0] if len(backends) == 1 else ReplicaSet(backends, sync_timeout_s=settings.sync_timeout_s)
    )

    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            try:
                started["server"], started["port"] = await start_grpc_server(
                    backend,
                    host=settings.host,
                    port=settings.port,
                    token=settings.token,
                    tls_cert=settings.tls_cert,
                    tls_key=settings.tls_key,
                    limits=limits,
                )
            except BaseException as err:
                started["error"] = err
            finally:
                ready.set()

        loop.run_until_complete(boot())
        if "error" not in started:
            loop.run_forever()

    thread = threading.Thread(target=run, name="edit-serve-grpc", daemon=True)
    thread.start()
    ready.wait()
    if "error" in started:
        serve.shutdown()
        ray.shutdown()
        raise started["error"]
    port = started["port"]
    return RunningSidecar(
        _format_address(settings.host, port), port, handles, settings, loop, thread, started["server"]
    )
