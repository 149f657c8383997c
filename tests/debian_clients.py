"""Shared by the client tests (Go, Java): install missing Debian packages, run a client, read its JSON.

A client test names the tools its build needs; when one is missing, :func:`ensure_installed`
installs the Debian packages with apt-get (only as root; otherwise the test is skipped with the
reason) and fails if they are still missing afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest


def _apt(*args: str, timeout: float) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(
            f"apt-get {' '.join(args)} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def ensure_installed(missing: Callable[[], list[str]], packages: Sequence[str], skip_env: str) -> None:
    """Install ``packages`` when ``missing()`` names anything; skip when ``$skip_env`` is ``1``."""
    if os.environ.get(skip_env) == "1":
        pytest.skip(f"{skip_env}=1")
    absent = missing()
    if not absent:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"toolchain missing ({', '.join(absent)}) and no apt-get to install it")
    if os.geteuid() != 0:
        pytest.skip(f"toolchain missing ({', '.join(absent)}); installing it needs root (apt-get)")
    _apt("update", timeout=600)
    _apt("install", "-y", "--no-install-recommends", *packages, timeout=1200)
    still = missing()
    assert not still, f"apt-get installed {list(packages)} but still missing: {still}"


def build_client(build_script: Path, out: Path) -> Path:
    """Run a client's ``build.sh OUT``; return the executable it prints on its last line."""
    done = subprocess.run(["bash", str(build_script), str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{build_script} failed:\n{done.stdout}\n{done.stderr}"
    binary = Path(done.stdout.strip().splitlines()[-1])
    assert binary.is_file() and os.access(binary, os.X_OK), f"no executable at {binary}"
    return binary


def run_json(binary: Path, *args: str) -> tuple[int, dict]:
    """Exit code and the one JSON object the client printed on stdout."""
    done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600)
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{binary.name} printed no JSON (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
