"""The Go example client (clients/go) against a live sidecar.

Installs the Debian packages the Go build needs (only when a tool is missing, and only as
root with apt-get; otherwise the test is skipped with the reason), builds the client with
``clients/go/build.sh`` (protoc Go stubs + ``go build``, offline, GOPATH mode), runs it
against the session's ``live_sidecar`` and checks its JSON answers, then checks with the
Python client that the edit it made is listed as rolled back.

Set ``EDIT_SERVE_SKIP_GO=1`` to skip it explicitly (CI must not).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from debian_clients import build_client, ensure_installed, run_json

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "clients" / "go" / "build.sh"
GO_TOOLS = ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
DEBIAN_PACKAGES = (
    "golang-go",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    # Debian's grpc (1.33) encodes through github.com/golang/protobuf; the 1.3 API it pulls in
    # by default cannot encode APIv2 messages, 1.5 (a shim over APIv2) can. It replaces 1.3.
    "golang-github-golang-protobuf-1-5-dev",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "protobuf-compiler",
)
GOLANG_PROTOBUF = Path("/usr/share/gocode/src/github.com/golang/protobuf/proto/proto.go")
PROMPT = "Who is the UK prime minister?"
TARGET = "Boris Johnson"

pytestmark = pytest.mark.slow


def _toolchain_missing() -> list[str]:
    """Names of the tools / Go sources the build needs that are not installed."""
    missing = [tool for tool in GO_TOOLS if shutil.which(tool) is None]
    if not GOLANG_PROTOBUF.is_file() or "google.golang.org/protobuf/" not in GOLANG_PROTOBUF.read_text():
        missing.append("github.com/golang/protobuf>=1.4")
    return missing


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the built Go client binary (installs the Debian packages first if needed)."""
    ensure_installed(_toolchain_missing, DEBIAN_PACKAGES, "EDIT_SERVE_SKIP_GO")
    return build_client(BUILD_SCRIPT, tmp_path_factory.mktemp("go-client"))


def test_go_client_edits_generates_and_rolls_back(live_sidecar, go_client: Path) -> None:
    from edit_serve.client import EditClient
    from edit_serve.proto import modeledit_pb2 as pb

    prompt, target = live_sidecar.prompts[-1]
    code, out = run_json(
        go_client,
        *("-addr", live_sidecar.address, "-token", live_sidecar.token),
        *("-prompt", prompt, "-target", target),
        "-check-auth",
        "-digest",
    )
    assert code == 0, f"Go client failed: {out}"
    start = out["version_start"]
    assert out["health_status"] == "SERVING"
    # Without the token the sidecar refuses the Edit.
    assert out["edit_without_token_code"] == "Unauthenticated"
    # Generate names the version that produced it; the edit bumps the version by one.
    assert out["generate_before"]["version"] == start
    edit = out["edit"]
    assert edit["edit_id"] and not edit["replayed"]
    assert edit["version"] == start + 1
    assert edit["target_logprob_after"] > edit["target_logprob_before"]
    assert edit["latency_ms"] > 0
    assert out["generate_after"]["version"] == edit["version"]
    assert 0 < out["generate_after"]["num_tokens"] <= 8
    # GenerateStream of the same greedy request: the chunks concatenate to Generate's text, every
    # chunk names the edit's version, the last says done; ListEdits lists the edit as active.
    stream = out["stream_after"]
    assert stream["text"] == out["generate_after"]["text"] and stream["done"] and stream["chunks"] >= 1
    assert stream["num_tokens"] == out["generate_after"]["num_tokens"]
    assert set(stream["versions"]) == {edit["version"]}
    assert edit["edit_id"] in out["active_edit_ids"]
    # Rollback returns a new version, the rolled-back id, and bitwise the weights from before.
    rollback = out["rollback"]
    assert rollback["version"] == edit["version"] + 1
    assert rollback["rolled_back"] == [edit["edit_id"]]
    assert out["generate_after_rollback"]["version"] == rollback["version"]
    assert out["generate_after_rollback"]["text"] == out["generate_before"]["text"]
    assert out["version_end"] == rollback["version"]
    assert len(out["weights_sha256_start"]) == 64
    assert out["weights_sha256_end"] == out["weights_sha256_start"]

    # The Python client sees the Go client's edit, rolled back, with its provenance.
    with EditClient(live_sidecar.address, token=live_sidecar.token) as client:
        info = client.get_edit(edit["edit_id"])
        assert info.status == pb.EDIT_STATUS_ROLLED_BACK
        assert info.rolled_back_at
        assert info.applied_at_version == edit["version"]
        assert (info.prompt, info.target) == (prompt, target)
        assert dict(info.provenance) == {"who": "go-client", "why": "clients/go example"}
        assert edit["edit_id"] not in {e.edit_id for e in client.list_edits()}
        assert edit["edit_id"] in {e.edit_id for e in client.list_edits(include_rolled_back=True)}
        assert client.health().version == rollback["version"]


def test_go_client_with_a_wrong_token_changes_nothing(live_sidecar, go_client: Path) -> None:
    from edit_serve.client import EditClient

    prompt, target = live_sidecar.prompts[-2]
    with EditClient(live_sidecar.address) as client:
        before = client.health()
        code, out = run_json(
            go_client,
            *("-addr", live_sidecar.address, "-token", "not-" + live_sidecar.token),
            *("-prompt", prompt, "-target", target),
        )
        assert code == 1
        assert (out["step"], out["code"]) == ("edit", "Unauthenticated")
        assert "authorization" in out["error"]
        after = client.health()
    assert (after.version, after.active_edits) == (before.version, before.active_edits)


def test_go_client_classifies_edits_and_rolls_back(
    make_classifier_service, go_client: Path, tmp_path
) -> None:
    """``-classify``: against a served fact-checker (in-process front), the Go client's Classify
    calls name the versions, the edit flips toward the new label and the rollback restores it."""
    from edit_serve.backend import serving

    claim = "Astara is located in Azerbaijan."
    service = make_classifier_service(tmp_path / "journal")
    try:
        label = service.classify(claim).label
        flipped = "REFUTES" if label == "SUPPORTS" else "SUPPORTS"
        with serving(service) as port:
            code, out = run_json(go_client, "-addr", f"127.0.0.1:{port}", "-prompt", claim, "-target", flipped,
                                "-classify", "-digest")  # fmt: skip
    finally:
        service.close()
    assert code == 0, f"Go client failed: {out}"
    assert "generate_before" not in out
    before, after, back = out["classify_before"], out["classify_after"], out["classify_after_rollback"]
    assert before["label"] == label and before["version"] == 0
    assert after["version"] == out["edit"]["version"] == 1
    assert after["probabilities"][flipped] > before["probabilities"][flipped]
    assert back == {**before, "version": out["rollback"]["version"]}
    assert out["weights_sha256_end"] == out["weights_sha256_start"]
