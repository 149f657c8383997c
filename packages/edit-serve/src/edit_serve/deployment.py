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
refusal to a precise status code. Serve's HTTP proxy is disabled too
(``proxy_location="Disabled"``), so the front is the only listener.

The front runs inside the leader replica's process, over its ``LocalBackend``: a read of a
single replica reaches the decode loop without a Ray hop (``bench/serve_load.py``, one client
over gRPC against in-process, same machine and day: 0.80 and 0.83 with the front in the driver
process, one Serve handle call per Generate; 0.89 to 0.93 from inside the replica, median 0.91
of four runs). Followers are reached through their applications' handles. The leader starts
its front once every replica is deployed (it would otherwise answer while followers are still
loading, which the first benchmark run did); a leader that Serve restarts starts it at once, on
the same port (``port=0`` is resolved to a free port before deploying). A killed leader takes
the front with it until Serve has restarted it (tested: the same address answers again, the
journal replayed).
"""

from __future__ import annotations

import os
import socket
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
        self.front = None
        if not follower and (self.settings.replicas == 1 or _deployed(replica_app(1))):
            self.front = self._start_front()  # one replica, or a leader that Serve restarted

    def start_front(self) -> int:
        """The leader's front, started once every replica is deployed (``start_sidecar`` calls
        this; before, the front would answer while followers are still loading); its port."""
        if self.front is None:
            self.front = self._start_front()
        return self.front.port

    def _start_front(self):
        """The leader's gRPC front, in this process: reads of a single replica reach the model
        without a Ray hop (one Serve handle call per Generate cost about a tenth of one client's
        throughput). With followers, the front's backend is a ``ReplicaSet`` of this replica and
        the followers' applications, looked up once they are deployed."""
        from edit_serve.backend import RayBackend
        from edit_serve.front import start_front
        from edit_serve.replicas import ReplicaSet

        s = self.settings
        backend = self.backend
        if s.replicas > 1:
            followers = [RayBackend(replica_app(i)) for i in range(1, s.replicas)]
            backend = ReplicaSet([backend, *followers], sync_timeout_s=s.sync_timeout_s)
        try:
            return start_front(
                backend, host=s.host, port=s.port, token=s.token, tls_cert=s.tls_cert, tls_key=s.tls_key,
                limits=s.limits,
            )  # fmt: skip
        except BaseException:
            self.backend.close()
            raise

    def stop_front(self) -> None:
        """Stop the front (in-flight calls get a second) before the replica goes away."""
        if self.front is not None:
            self.front.stop(grace=1.0)

    def __del__(self) -> None:  # Serve calls it when it shuts the replica down
        if hasattr(self, "front"):  # not when the constructor failed early
            self.stop_front()

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


def replica_app(i: int) -> str:
    """The Serve application of replica ``i`` (0 leads)."""
    return APP_NAME if i == 0 else f"{APP_NAME}-replica-{i}"


def _free_port(host: str) -> int:
    """A port free on ``host`` now (``RuntimeError`` when ``host`` cannot be bound)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family) as sock:
            sock.bind((host.strip("[]"), 0))
            return sock.getsockname()[1]
    except OSError as err:
        raise RuntimeError(f"cannot listen on {host}: {err}") from err


def _deployed(app: str) -> bool:
    """Whether Serve knows the application ``app``."""
    from ray import serve

    try:
        serve.get_app_handle(app)
    except Exception:  # RayServeException: no such application
        return False
    return True


@dataclass
class RunningSidecar:
    """A started sidecar: ``address`` ("127.0.0.1:PORT") of the front (which runs in the leader
    replica's process), one deployment handle per replica (``handles[0]`` leads), ``stop()``."""

    address: str
    port: int
    handles: list[Any]
    settings: SidecarSettings

    def placement(self, replica: int = 0) -> dict[str, Any]:
        return self.handles[replica].placement.remote().result()

    def ask_replica(self, replica: int, method: str, **kwargs: Any) -> Any:
        """One replica's own answer (``EditService.<method>``), bypassing the front: e.g.
        ``ask_replica(1, "health", with_digest=True)``. Raises ``ServeError`` on refusal."""
        from edit_serve.backend import _unwrap

        return _unwrap(self.handles[replica].call.remote(method, kwargs).result())

    def stop(self) -> None:
        """Stop the gRPC front, the Serve applications and Ray."""
        import ray
        from ray import serve

        try:
            self.handles[0].stop_front.remote().result(timeout_s=30)
        finally:
            serve.shutdown()
            ray.shutdown()


def start_sidecar(settings: SidecarSettings) -> RunningSidecar:
    """Start a local Ray instance and deploy ``EditServeDeployment`` once per replica; the leader
    (replica 0) starts the gRPC front in its own process. Raises ``RuntimeError`` with the
    replica's error when the model, editor or journal cannot be loaded (e.g. a corrupt journal)
    or the front cannot listen on its address."""
    import ray
    from ray import serve

    paths = ("model", "editor", "journal", "tls_cert", "tls_key")  # the replica's working folder differs
    settings = replace(
        settings,
        **{
            name: str(Path(getattr(settings, name)).resolve())
            for name in paths
            if getattr(settings, name) is not None
            and not (name == "editor" and settings.editor.lower() in UNTRAINED_EDITORS)
        },
    )
    if settings.replicas < 1:
        raise ValueError(f"replicas={settings.replicas}: at least one is needed")
    if settings.port == 0:  # a leader that Serve restarts listens again on the same port
        settings = replace(settings, port=_free_port(settings.host))
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
            app = deployment.bind(asdict(settings), follower=i > 0)
            handles.append(serve.run(app, name=replica_app(i), route_prefix=None))
        port = handles[0].start_front.remote().result()
    except Exception as err:
        serve.shutdown()
        ray.shutdown()
        raise RuntimeError(f"edit-serve replica {len(handles)} failed to start: {err}") from err
    return RunningSidecar(_format_address(settings.host, port), port, handles, settings)
