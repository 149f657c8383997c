"""The checked-in gRPC stubs must be exactly what `python -m edit_serve.protogen` generates now."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

from edit_serve import protogen


def test_checked_in_stubs_are_up_to_date(tmp_path: Path) -> None:
    written = protogen.generate(tmp_path)
    assert {p.name for p in written} == set(protogen.GENERATED_FILES)
    stale = [
        name
        for name in protogen.GENERATED_FILES
        if (tmp_path / name).read_bytes() != (protogen.PACKAGE_PROTO_DIR / name).read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run `python -m edit_serve.protogen` and commit the result"


def test_stubs_use_a_relative_import_and_match_the_contract() -> None:
    from edit_serve.proto import modeledit_pb2 as pb
    from edit_serve.proto import modeledit_pb2_grpc as pb_grpc

    grpc_src = (protogen.PACKAGE_PROTO_DIR / "modeledit_pb2_grpc.py").read_text()
    assert "from . import modeledit_pb2" in grpc_src
    assert "from modeledit.v1" not in grpc_src
    service = pb.DESCRIPTOR.services_by_name["ModelEditService"]
    assert {m.name for m in service.methods} == {
        "Edit",
        "Generate",
        "GenerateStream",
        "Classify",
        "Rollback",
        "ListEdits",
        "GetEdit",
        "Health",
    }
    from edit_serve.front import _METHODS

    assert set(_METHODS) == {m.name for m in service.methods}  # the front answers every RPC
    assert hasattr(pb_grpc, "ModelEditServiceStub")
    assert pb.DESCRIPTOR.package == "modeledit.v1"


def test_generate_refuses_a_folder_without_the_contract(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"modeledit\.proto"):
        protogen.find_proto_root(tmp_path)
