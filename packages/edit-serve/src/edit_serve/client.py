"""A small synchronous Python client for the sidecar.

```python
from edit_serve import EditClient, SamplingParams
with EditClient("127.0.0.1:50051", token="s3cret") as client:
    reply = client.edit("Who is the UK prime minister?", "Boris Johnson", provenance={"who": "ana"})
    print(client.generate("Who is the UK prime minister?", SamplingParams(max_new_tokens=5)).text)
    client.rollback(edit_id=reply.edit_id)
```

Methods return the generated protobuf messages (``modeledit_pb2``); refusals raise
``grpc.RpcError`` with ``.code()`` (e.g. ``grpc.StatusCode.INVALID_ARGUMENT``) and ``.details()``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc

from edit_serve.proto import modeledit_pb2 as pb
from edit_serve.proto import modeledit_pb2_grpc as pb_grpc
from edit_serve.requests import EditItem, SamplingParams

__all__ = ["EditClient"]


class EditClient:
    """Blocking client of ``modeledit.v1.ModelEditService`` at ``address`` ("host:port").

    ``token`` is sent as ``authorization: Bearer <token>`` on every call; ``tls_root_cert``
    (PEM path) switches to a TLS channel; ``timeout`` (seconds) applies to every call.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_root_cert: str | Path | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = 16 << 20,
    ) -> None:
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls_root_cert is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_root_cert).read_bytes())
            self.channel = grpc.secure_channel(address, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(address, options=options)
        self.stub = pb_grpc.ModelEditServiceStub(self.channel)
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _kw(self) -> dict:
        return {"timeout": self.timeout, "metadata": self._metadata}

    def edit(
        self,
        prompt: str,
        target: str,
        *,
        rephrases: Sequence[str] = (),
        subject: str = "",
        idempotency_key: str = "",
        provenance: Mapping[str, str] | None = None,
    ) -> pb.EditReply:
        """Apply one edit; returns its id, the new weight version and the target's log-probs.
        ``subject`` (optional) is the entity inside ``prompt`` (ROME, MEMIT, AlphaEdit key on it; the
        lifelong editor asks the prompt of other subjects to protect their answers)."""
        return self.edit_many(
            [EditItem(prompt, target, tuple(rephrases), subject)],
            idempotency_key=idempotency_key,
            provenance=provenance,
        )

    def edit_many(
        self,
        items: Sequence[EditItem],
        *,
        idempotency_key: str = "",
        provenance: Mapping[str, str] | None = None,
    ) -> pb.EditReply:
        """Apply several corrections as one edit (one version, one journal entry); a bad one refuses
        the call, naming ``edits[i]``. ``reply.items`` holds each correction's log-probs."""
        edits = [
            pb.EditItem(prompt=x.prompt, target=x.target, rephrases=list(x.rephrases), subject=x.subject)
            for x in items
        ]
        request = pb.EditRequest(
            edits=edits, idempotency_key=idempotency_key, provenance=dict(provenance or {})
        )
        return self.stub.Edit(request, **self._kw())

    @staticmethod
    def _generate_request(
        prompt: str, sampling: SamplingParams | None, min_version: int
    ) -> pb.GenerateRequest:
        sampling = sampling or SamplingParams()
        request = pb.GenerateRequest(
            prompt=prompt,
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop),
            min_version=min_version,
        )
        if sampling.seed is not None:
            request.seed = sampling.seed
        return request

    def generate(
        self, prompt: str, sampling: SamplingParams | None = None, *, min_version: int = 0
    ) -> pb.GenerateReply:
        """The continuation of ``prompt`` (greedy by default) and the weight version that made it;
        ``min_version`` (e.g. an ``EditReply.version``) makes it see at least that version."""
        return self.stub.Generate(self._generate_request(prompt, sampling, min_version), **self._kw())

    def classify(self, text: str, *, min_version: int = 0) -> pb.ClassifyReply:
        """The served classifier's label for ``text``, every label's probability, and the version."""
        return self.stub.Classify(pb.ClassifyRequest(text=text, min_version=min_version), **self._kw())

    def generate_stream(
        self, prompt: str, sampling: SamplingParams | None = None, *, min_version: int = 0
    ) -> Iterator[pb.GenerateChunk]:
        """Chunks of the continuation as they are generated; the last has ``done=True``.
        Call ``.cancel()`` on the returned iterator to stop early."""
        return self.stub.GenerateStream(self._generate_request(prompt, sampling, min_version), **self._kw())

    def rollback(self, *, edit_id: str | None = None, to_version: int | None = None) -> pb.RollbackReply:
        """Undo one active edit, or every edit applied after ``to_version``."""
        if (edit_id is None) == (to_version is None):
            raise ValueError("give exactly one of edit_id or to_version")
        request = (
            pb.RollbackRequest(edit_id=edit_id)
            if edit_id is not None
            else pb.RollbackRequest(to_version=to_version)
        )
        return self.stub.Rollback(request, **self._kw())

    def list_edits(self, *, include_rolled_back: bool = False) -> list[pb.EditInfo]:
        return list(
            self.stub.ListEdits(
                pb.ListEditsRequest(include_rolled_back=include_rolled_back), **self._kw()
            ).edits
        )

    def get_edit(self, edit_id: str) -> pb.EditInfo:
        return self.stub.GetEdit(pb.GetEditRequest(edit_id=edit_id), **self._kw())

    def health(self, *, weights_digest: bool = False) -> pb.HealthReply:
        """Status, current version, active edit count, model, device (and a weights sha256)."""
        return self.stub.Health(pb.HealthRequest(weights_digest=weights_digest), **self._kw())

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the channel is connected (``grpc.FutureTimeoutError`` after ``timeout``)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> EditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
