"""A sidecar without Ray, for tests that restart it many times: ``python serve_in_process.py
MODEL EDITOR JOURNAL`` serves ``EditService`` through the same gRPC front on a free loopback port
(``edit_serve.backend.serving``) and prints ``serving ... on HOST:PORT (journal DIR)`` as
``edit-serve`` does. It starts in seconds instead of Ray's tens; the journal, the service and the
front are the sidecar's own code."""

from __future__ import annotations

import sys
import threading

from edit_serve import EditJournal, EditService, ServeLimits
from edit_serve.backend import serving
from edit_serve.loading import load_served


def main(model_dir: str, editor_dir: str, journal_dir: str) -> None:
    loaded = load_served(model_dir, editor_dir)
    service = EditService(
        loaded.model, loaded.tokenizer, loaded.editor, EditJournal(journal_dir), ServeLimits()
    )
    with serving(service) as port:
        print(f"serving {model_dir} on 127.0.0.1:{port} (journal {journal_dir})", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(*sys.argv[1:4])
