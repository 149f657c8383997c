"""The ``edit-serve`` command in a subprocess, for the tests that run it as a user would:
``ServerProcess`` (started in its own process group, ``address`` once it serves, ``kill()``
takes Ray's processes with it; ``command`` runs another server, e.g. ``serve_in_process.py``),
``serve_env()`` and ``wait_journal_free``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from edit_serve import EditJournal, JournalLockedError


def serve_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        COLUMNS="400",
    )
    return env


class ServerProcess:
    """``python -m edit_serve ...`` in its own process group; ``address`` once it serves."""

    def __init__(self, args: list[str], timeout: float = 180.0, command: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, "-m", "edit_serve"]), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=serve_env(),
            start_new_session=True,
        )
        self.address: str | None = None
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"serving .* on (\S+) \(journal", line)
                if m:
                    self.address = m.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(timeout)
        if self.address is None:
            self.kill()
            raise AssertionError("edit-serve did not start:\n" + "".join(self.lines[-40:]))

    def kill(self) -> None:
        """SIGKILL the server process, then everything it started (Ray's processes)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


def wait_journal_free(journal: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            EditJournal(journal).close()
            return
        except JournalLockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
