"""The Java example client (clients/java) against a live sidecar.

Installs the Debian packages the Java build needs (only when something is missing, and only as
root with apt-get; otherwise the test is skipped with the reason), builds the client with
``clients/java/build.sh`` (protoc Java + grpc-java stubs, javac, no Maven), runs it against the
session's ``live_sidecar`` and checks its JSON answers, then checks with the Python client that
the edit it made is recorded and rolled back.

Set ``EDIT_SERVE_SKIP_JAVA=1`` to skip it explicitly (CI must not).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from debian_clients import build_client, ensure_installed, run_json

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "clients" / "java" / "build.sh"
DEBIAN_PACKAGES = (
    "default-jdk-headless",
    "libgrpc-java",
    "libprotobuf-java",
    "protobuf-compiler",
    "protobuf-compiler-grpc-java-plugin",
    # What grpc-java loads at run time that Debian's libgrpc-java does not depend on.
    "libnetty-java",
    "libperfmark-java",
    "libgoogle-gson-java",
)
JARS = ("grpc-netty", "grpc-stub", "protobuf", "netty-codec-http2", "perfmark-api", "gson")

pytestmark = pytest.mark.slow


def _toolchain_missing() -> list[str]:
    missing = [tool for tool in ("java", "javac", "jar", "protoc") if shutil.which(tool) is None]
    missing += [str(p) for p in [Path("/usr/bin/grpc_java_plugin")] if not p.exists()]
    return missing + [jar for jar in JARS if not Path(f"/usr/share/java/{jar}.jar").is_file()]


@pytest.fixture(scope="module")
def java_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built client's launcher (installs the Debian packages first if needed)."""
    ensure_installed(_toolchain_missing, DEBIAN_PACKAGES, "EDIT_SERVE_SKIP_JAVA")
    return build_client(BUILD_SCRIPT, tmp_path_factory.mktemp("java-client"))


def test_java_client_edits_generates_and_rolls_back(live_sidecar, java_client: Path) -> None:
    from edit_serve.client import EditClient
    from edit_serve.proto import modeledit_pb2 as pb

    prompt, target = live_sidecar.prompts[-3]
    code, out = run_json(
        java_client,
        *("--addr", live_sidecar.address, "--token", live_sidecar.token),
        *("--prompt", prompt, "--target", target, "--digest"),
    )
    assert code == 0, f"Java client failed: {out}"
    start = out["version_start"]
    assert out["health_status"] == "SERVING"
    assert out["generate_before"]["version"] == start
    edit = out["edit"]
    assert edit["edit_id"] and not edit["replayed"]
    assert edit["version"] == start + 1
    assert edit["target_logprob_after"] > edit["target_logprob_before"]
    assert out["generate_after"]["version"] == edit["version"]
    assert 0 < out["generate_after"]["num_tokens"] <= 8
    rollback = out["rollback"]
    assert rollback == {"version": edit["version"] + 1, "rolled_back": [edit["edit_id"]]}
    assert out["generate_after_rollback"]["version"] == rollback["version"]
    assert out["generate_after_rollback"]["text"] == out["generate_before"]["text"]
    assert out["version_end"] == rollback["version"]
    assert len(out["weights_sha256_start"]) == 64
    assert out["weights_sha256_end"] == out["weights_sha256_start"]

    with EditClient(live_sidecar.address, token=live_sidecar.token) as client:
        info = client.get_edit(edit["edit_id"])
        assert info.status == pb.EDIT_STATUS_ROLLED_BACK
        assert info.applied_at_version == edit["version"]
        assert (info.prompt, info.target) == (prompt, target)
        assert dict(info.provenance) == {"who": "java-client", "why": "clients/java example"}


def test_java_client_with_a_wrong_token_changes_nothing(live_sidecar, java_client: Path) -> None:
    from edit_serve.client import EditClient

    prompt, target = live_sidecar.prompts[-4]
    with EditClient(live_sidecar.address) as client:
        before = client.health()
        code, out = run_json(
            java_client,
            *("--addr", live_sidecar.address, "--token", "not-" + live_sidecar.token),
            *("--prompt", prompt, "--target", target),
        )
        after = client.health()
    assert code == 1
    assert (out["step"], out["code"]) == ("edit", "UNAUTHENTICATED")
    assert "authorization" in out["error"]
    assert (after.version, after.active_edits) == (before.version, before.active_edits)


def test_java_client_refuses_bad_arguments(java_client: Path) -> None:
    done = subprocess.run([str(java_client), "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--prompt and --target are required" in done.stderr
