"""Generate the Python gRPC stubs from ``protos/`` (``python -m edit_serve.protogen``).

The stubs in ``edit_serve/proto/`` are generated, checked in, and never edited by hand:
``tests/edit_serve/test_protogen.py`` regenerates them into a temporary folder and fails
when the checked-in copies differ. ``protoc`` writes ``from modeledit.v1 import
modeledit_pb2``; we rewrite that one line into a relative import so the stubs live
inside the ``edit_serve.proto`` package. A copy of the ``.proto`` ships as package data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_RELPATH = Path("modeledit/v1/modeledit.proto")
PACKAGE_PROTO_DIR = Path(__file__).resolve().parent / "proto"
GENERATED_FILES = ("modeledit_pb2.py", "modeledit_pb2.pyi", "modeledit_pb2_grpc.py", "modeledit.proto")


def find_proto_root(start: Path | None = None) -> Path:
    """The repository's ``protos/`` folder, searched upwards from ``start`` (default: this file, then cwd)."""
    candidates = [start] if start is not None else [Path(__file__).resolve(), Path.cwd().resolve()]
    for base in candidates:
        for folder in [base, *base.parents]:
            if (folder / "protos" / PROTO_RELPATH).is_file():
                return folder / "protos"
    raise FileNotFoundError(
        f"cannot find protos/{PROTO_RELPATH} above {', '.join(str(c) for c in candidates)}; "
        "run from the repository checkout or pass --proto-root"
    )


def generate(out_dir: Path, proto_root: Path | None = None) -> list[Path]:
    """Run grpcio-tools' protoc on the contract and write the stubs (flat) into ``out_dir``.

    Returns the written paths. Raises ``RuntimeError`` with protoc's exit code on failure.
    """
    from grpc_tools import protoc  # the [dev] extra: only needed to regenerate

    proto_root = (proto_root or find_proto_root()).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        include = str(Path(protoc.__file__).resolve().parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            str(proto_root / PROTO_RELPATH),
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code} on {proto_root / PROTO_RELPATH}")
        gen = Path(tmp) / PROTO_RELPATH.parent
        written = []
        for name in GENERATED_FILES[:3]:
            text = (gen / name).read_text()
            if name == "modeledit_pb2_grpc.py":
                text = text.replace("from modeledit.v1 import modeledit_pb2", "from . import modeledit_pb2")
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    shutil.copyfile(proto_root / PROTO_RELPATH, out_dir / "modeledit.proto")
    written.append(out_dir / "modeledit.proto")
    init = out_dir / "__init__.py"
    if not init.exists():
        init.write_text(
            '"""Generated gRPC stubs for modeledit.v1 (see edit_serve.protogen). Do not edit."""\n'
        )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PACKAGE_PROTO_DIR, help="output folder")
    parser.add_argument("--proto-root", type=Path, default=None, help="the protos/ folder")
    args = parser.parse_args(argv)
    for path in generate(args.out, args.proto_root):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
