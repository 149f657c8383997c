"""The grpc.aio front over an in-process backend (no Ray): TLS, token, limits."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from edit_serve import EditClient, EditItem, SamplingParams, ServeLimits
from edit_serve.backend import LocalBackend, serving
from edit_serve.front import start_grpc_server


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return d / "cert.pem", d / "key.pem"


def test_tls_and_token(make_service, tiny_artifacts, tls_files) -> None:
    cert, key = tls_files
    service = make_service()
    prompt, target = tiny_artifacts.prompts[0]
    with serving(service, token="t0k", tls_cert=cert, tls_key=key) as port:
        address = f"127.0.0.1:{port}"
        with EditClient(address, token="t0k", tls_root_cert=cert, timeout=30) as c:
            r = c.edit(prompt, target)
            assert c.generate(prompt, SamplingParams(max_new_tokens=3)).version == r.version
        with EditClient(address, tls_root_cert=cert, timeout=30) as c:
            with pytest.raises(grpc.RpcError) as err:
                c.rollback(edit_id=r.edit_id)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert c.health().version == r.version  # reads need no token
        with EditClient(address, timeout=5) as plain:  # a plaintext client cannot talk to a TLS server
            with pytest.raises(grpc.RpcError) as err:
                plain.health()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_message_size_limit_and_tls_arguments(make_service) -> None:
    service = make_service(max_message_bytes=2048)
    with (
        serving(service, limits=service.limits) as port,
        EditClient(f"127.0.0.1:{port}", timeout=30) as c,
    ):
        with pytest.raises(grpc.RpcError) as err:
            c.generate("x" * 4096)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.health().status == "SERVING"
    with pytest.raises(ValueError, match="both"):
        asyncio.run(start_grpc_server(LocalBackend(service), tls_cert="c.pem", limits=ServeLimits()))


def test_edits_do_not_wait_for_open_streams(make_service, tiny_artifacts) -> None:
    """Two streams are open (their first chunk read, the rest not yet) while six Edits arrive: the
    Edits complete before the streams are read to the end (they land between decode steps), one
    version each, and the streams then end normally with versions that never decrease."""
    service = make_service(max_concurrent_generations=2)
    backend = LocalBackend(service)
    prompt = tiny_artifacts.prompts[0][0]

    async def scenario():
        streams = [backend.stream(prompt=prompt, sampling=SamplingParams(max_new_tokens=6)) for _ in range(2)]
        firsts = [await s.__anext__() for s in streams]
        edits = [backend.call("edit", items=[EditItem(p, t)]) for p, t in tiny_artifacts.prompts[:6]]
        results = await asyncio.wait_for(asyncio.gather(*edits), 120)
        rests = []
        for s in streams:
            rests.append([item async for item in s])
        return firsts, rests, results

    try:
        firsts, rests, results = asyncio.run(asyncio.wait_for(scenario(), 180))
    finally:
        for pool in (backend.writes, backend.generations, backend.queries):
            pool.shutdown(wait=True)
    assert {version for _, version in firsts} == {0}
    for first, rest in zip(firsts, rests, strict=True):
        versions = [first[1]] + [version for _, version in rest]
        assert versions == sorted(versions) and rest[-1][0].done
    assert sorted(r.version for r in results) == [1, 2, 3, 4, 5, 6]
    assert service.lock.readers == 0 and not service.lock.writing and service._inflight == 0
