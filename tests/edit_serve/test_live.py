"""Integration tests against ONE real Ray Serve + gRPC sidecar on loopback (``live_sidecar``).

Tests share the server, so each one asserts relative to the state it finds and cleans up its
edits. Every refusal must leave the weights (sha256 of all parameters) and the version as
they were, and the server must keep serving.
"""

from __future__ import annotations

import socket
import threading
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edit_serve import EditClient, SamplingParams
from edit_serve.proto import modeledit_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def client(live_sidecar):
    with EditClient(live_sidecar.address, token=live_sidecar.token, timeout=60) as c:
        yield c


@pytest.fixture
def anonymous(live_sidecar):
    with EditClient(live_sidecar.address, timeout=60) as c:
        yield c


def _state(client: EditClient) -> tuple[str, int, int]:
    h = client.health(weights_digest=True)
    return h.weights_sha256, h.version, h.active_edits


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_replica_gets_the_requested_logical_gpus(live_sidecar, client) -> None:
    placement = live_sidecar.placement
    assert len(placement["ray_gpu_ids"]) == 2
    assert placement["cuda_visible_devices"].split(",") == placement["ray_gpu_ids"]
    assert placement["device"] == "cpu"  # CPU build of torch: the same code runs on CPU
    h = client.health()
    assert h.status == "SERVING" and h.device == "cpu" and h.model.endswith("model")


def _non_loopback_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a local address
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def test_listens_on_loopback_only(live_sidecar) -> None:
    host, port = live_sidecar.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((ip, int(port))) != 0, f"the sidecar answers on {ip}:{port}"


def test_edit_generate_rollback_round_trip(live_sidecar, client) -> None:
    prompt, target = live_sidecar.prompts[0]
    digest0, v0, n0 = _state(client)
    before = client.generate(prompt, SamplingParams(max_new_tokens=6))
    assert before.version == v0
    r = client.edit(
        prompt, target, provenance={"who": "test", "why": "round trip"}, rephrases=[prompt + " !"]
    )
    assert r.version == v0 + 1 and not r.replayed and r.latency_ms > 0
    assert r.target_logprob_after > r.target_logprob_before
    after = client.generate(prompt, SamplingParams(max_new_tokens=6))
    assert after.version == r.version
    info = client.get_edit(r.edit_id)
    assert info.status == pb.EDIT_STATUS_ACTIVE and dict(info.provenance)["who"] == "test"
    assert info.applied_at_version == r.version and info.created_at.endswith("Z")
    assert r.edit_id in [e.edit_id for e in client.list_edits()]
    rb = client.rollback(edit_id=r.edit_id)
    assert rb.version == r.version + 1 and list(rb.rolled_back) == [r.edit_id]
    digest, version, n = _state(client)
    assert digest == digest0 and n == n0 and version == rb.version
    assert client.generate(prompt, SamplingParams(max_new_tokens=6)).text == before.text
    assert client.get_edit(r.edit_id).status == pb.EDIT_STATUS_ROLLED_BACK
    assert r.edit_id not in [e.edit_id for e in client.list_edits()]
    assert r.edit_id in [e.edit_id for e in client.list_edits(include_rolled_back=True)]


def test_rollback_of_any_edit_matches_a_server_without_it(live_sidecar, client, replay_digest) -> None:
    v0 = client.health().version
    ids = [client.edit(p, t).edit_id for p, t in live_sidecar.prompts[1:4]]
    client.rollback(edit_id=ids[1])
    digest = client.health(weights_digest=True).weights_sha256
    active_before = [e.edit_id for e in client.list_edits() if e.edit_id not in ids]
    expected = replay_digest(
        live_sidecar.model_dir,
        live_sidecar.editor_dir,
        live_sidecar.journal_dir,
        [*active_before, ids[0], ids[2]],
    )
    assert digest == expected
    rb = client.rollback(to_version=v0)
    assert sorted(rb.rolled_back) == sorted([ids[0], ids[2]])


def test_idempotent_retry_over_grpc(live_sidecar, client) -> None:
    prompt, target = live_sidecar.prompts[4]
    key = f"idem-{time.time_ns()}"
    first = client.edit(prompt, target, idempotency_key=key)
    state = _state(client)
    second = client.edit(prompt, target, idempotency_key=key)
    assert second.replayed and second.edit_id == first.edit_id and second.version == first.version
    assert _state(client) == state
    client.rollback(edit_id=first.edit_id)


def test_edit_and_rollback_need_the_token(live_sidecar, client, anonymous) -> None:
    prompt, target = live_sidecar.prompts[0]
    state = _state(client)
    with EditClient(live_sidecar.address, token="wrong") as wrong:
        for c in (anonymous, wrong):
            assert _code(lambda c=c: c.edit(prompt, target))[0] == grpc.StatusCode.UNAUTHENTICATED
            assert _code(lambda c=c: c.rollback(to_version=0))[0] == grpc.StatusCode.UNAUTHENTICATED
    assert anonymous.generate(prompt, SamplingParams(max_new_tokens=2)).version == state[1]  # reads stay open
    assert _state(client) == state


BAD = [
    ("Edit", pb.EditRequest(prompt="", target="x"), grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    ("Edit", pb.EditRequest(prompt="Who?", target=" "), grpc.StatusCode.INVALID_ARGUMENT, "target is empty"),
    (
        "Edit",
        pb.EditRequest(prompt="x" * 401, target="y"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "401 characters",
    ),
    ("Edit", pb.EditRequest(prompt="w " * 60, target="y"), grpc.StatusCode.RESOURCE_EXHAUSTED, "tokens"),
    ("Generate", pb.GenerateRequest(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    (
        "Generate",
        pb.GenerateRequest(prompt="Who?", temperature=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "temperature",
    ),
    ("Generate", pb.GenerateRequest(prompt="Who?", top_p=2), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("Generate", pb.GenerateRequest(prompt="Who?", stop=[""]), grpc.StatusCode.INVALID_ARGUMENT, "stop[0]"),
    (
        "Generate",
        pb.GenerateRequest(prompt="Who?", max_new_tokens=25),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "max_new",
    ),
    (
        "Generate",
        pb.GenerateRequest(prompt="w " * 60),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "prompt is 60 tokens",
    ),
    ("GenerateStream", pb.GenerateRequest(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "prompt is empty"),
    ("Rollback", pb.RollbackRequest(), grpc.StatusCode.INVALID_ARGUMENT, "edit_id or to_version"),
    ("Rollback", pb.RollbackRequest(edit_id="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("Rollback", pb.RollbackRequest(to_version=10**9), grpc.StatusCode.INVALID_ARGUMENT, "to_version"),
    ("GetEdit", pb.GetEditRequest(edit_id="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("Edit", pb.EditRequest(prompt="x" * 70_000, target="y"), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
]


@pytest.mark.parametrize(
    ("method", "request_", "code", "detail"), BAD, ids=[f"{b[0]}-{b[2].name}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_requests_get_precise_codes_and_change_nothing(client, method, request_, code, detail) -> None:
    state = _state(client)
    call = getattr(client.stub, method)

    def run():
        reply = call(request_, timeout=60, metadata=client._metadata)
        if method == "GenerateStream":
            list(reply)

    got, details = _code(run)
    assert got == code, details
    assert detail in details
    assert _state(client) == state


@pytest.mark.parametrize("method", ["Edit", "Generate", "GenerateStream", "Rollback", "GetEdit"])
def test_invalid_utf8_is_invalid_argument(live_sidecar, client, method) -> None:
    state = _state(client)
    path = f"/modeledit.v1.ModelEditService/{method}"
    raw = b"\x0a\x02\xff\xfe"  # field 1 (a string in every request) = invalid UTF-8
    meta = (("authorization", f"Bearer {live_sidecar.token}"),)
    if method == "GenerateStream":
        rpc = client.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
        got, details = _code(lambda: list(rpc(raw, timeout=30, metadata=meta)))
    else:
        rpc = client.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        got, details = _code(lambda: rpc(raw, timeout=30, metadata=meta))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details
    assert _state(client) == state


def test_stream_matches_generate_and_cancel_releases_the_lock(live_sidecar, client) -> None:
    prompt, target = live_sidecar.prompts[5]
    full = client.generate(prompt, SamplingParams(max_new_tokens=10, temperature=0.8, seed=11))
    chunks = list(client.generate_stream(prompt, SamplingParams(max_new_tokens=10, temperature=0.8, seed=11)))
    assert "".join(c.text for c in chunks) == full.text
    assert chunks[-1].done and chunks[-1].num_tokens == full.num_tokens
    assert {c.version for c in chunks} == {full.version}
    stream = client.generate_stream(prompt, SamplingParams(max_new_tokens=24))
    next(stream)
    stream.cancel()  # the client goes away mid-stream: the replica must release the read lock
    r = client.edit(prompt, target)
    client.rollback(edit_id=r.edit_id)


def test_generate_during_edit_sees_whole_versions(live_sidecar, client) -> None:
    """A Generate reply is exactly what the version it names produces; so is a stream whose chunks
    all name one version (one that spans an edit names each chunk's version, in order)."""
    prompt = live_sidecar.prompts[6][0]
    v0 = client.health().version
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(stream: bool) -> None:
        with EditClient(live_sidecar.address, timeout=60) as c:
            while not stop.is_set():
                try:
                    if stream:  # an edit may land between two chunks: versions never decrease
                        chunks = list(c.generate_stream(prompt, SamplingParams(max_new_tokens=6)))
                        versions = [ch.version for ch in chunks]
                        assert versions == sorted(versions)
                        if len(set(versions)) == 1:
                            seen.append((versions[0], "".join(ch.text for ch in chunks)))
                    else:
                        g = c.generate(prompt, SamplingParams(max_new_tokens=6))
                        seen.append((g.version, g.text))
                except BaseException as err:
                    errors.append(err)
                    return

    threads = [threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    ids = [client.edit(p, t).edit_id for p, t in live_sidecar.prompts[6:9]]
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    expected = {}
    for version in range(v0 + len(ids), v0, -1):  # the text each version produces, computed quietly
        expected[version] = client.generate(prompt, SamplingParams(max_new_tokens=6)).text
        client.rollback(edit_id=ids[version - v0 - 1])
    expected[v0] = client.generate(prompt, SamplingParams(max_new_tokens=6)).text
    assert seen
    for version, text in seen:
        assert text == expected[version], f"a reply named version {version} but does not match it"


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", " ", "Who?", "x" * 500, "\x00", "w " * 50]
)
_float = st.floats(allow_nan=True, allow_infinity=True, width=32)
_requests = st.one_of(
    st.builds(
        lambda p, t, k: ("Edit", pb.EditRequest(prompt=p, target=t, idempotency_key=k)), _text, _text, _text
    ),
    st.builds(
        lambda p, n, temp, top, stop: (
            "Generate",
            pb.GenerateRequest(prompt=p, max_new_tokens=n, temperature=temp, top_p=top, stop=stop),
        ),
        _text,
        st.integers(0, 40),
        _float,
        _float,
        st.lists(_text, max_size=3),
    ),
    st.builds(
        lambda p, n: ("GenerateStream", pb.GenerateRequest(prompt=p, max_new_tokens=n)),
        _text,
        st.integers(0, 30),
    ),
    st.builds(lambda i: ("Rollback", pb.RollbackRequest(edit_id=i)), _text),
    st.builds(lambda v: ("Rollback", pb.RollbackRequest(to_version=v)), st.integers(0, 2**64 - 1)),
    st.builds(lambda i: ("GetEdit", pb.GetEditRequest(edit_id=i)), _text),
    st.builds(lambda b: ("Raw", b), st.binary(max_size=40)),
)
OK_OR_REFUSED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(_requests, min_size=1, max_size=6))
def test_random_requests_leave_weights_and_journal_intact(live_sidecar, client, replay_digest, batch) -> None:
    for method, request in batch:
        try:
            if method == "Raw":
                rpc = client.channel.unary_unary(
                    "/modeledit.v1.ModelEditService/Edit", request_serializer=None, response_deserializer=None
                )
                rpc(request, timeout=60, metadata=client._metadata)
            elif method == "GenerateStream":
                list(client.stub.GenerateStream(request, timeout=60))
            else:
                getattr(client.stub, method)(request, timeout=60, metadata=client._metadata)
        except grpc.RpcError as err:
            assert err.code() in OK_OR_REFUSED, (method, request, err.code(), err.details())
    h = client.health(weights_digest=True)
    assert h.status == "SERVING"
    active = client.list_edits()
    assert h.active_edits == len(active)
    # the weights are exactly base + the journal's active edits, in order (journal opens clean)
    assert h.weights_sha256 == replay_digest(
        live_sidecar.model_dir, live_sidecar.editor_dir, live_sidecar.journal_dir
    )
