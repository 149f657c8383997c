"""``edit-serve``: serve a model and its MEND editor over gRPC, with a durable edit journal.

With no arguments it serves ``runs/default/model`` with the lifelong editor ``runs/default/lifelong``
(``--editor runs/default/editor`` picks plain MEND) (running the
default ``edit-train`` job first when they are missing) on 127.0.0.1:50051 with the journal in
``runs/default/journal``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import typer

from edit_serve.journal import EditJournal, JournalCorruptError, JournalLockedError
from edit_serve.loading import UNTRAINED_EDITORS
from edit_serve.requests import ServeLimits

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])

DEFAULT_RUN = Path("runs/default")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _run_default_job() -> None:
    exe = shutil.which("edit-train") or str(Path(sys.executable).with_name("edit-train"))
    if not Path(exe).exists():
        raise typer.BadParameter(f"{DEFAULT_RUN}/model is missing and the edit-train command was not found")
    typer.echo(f"[edit-serve] {DEFAULT_RUN}/model or editor missing: running the default job `{exe}` first")
    code = subprocess.call([exe])
    if code != 0:
        typer.echo(f"[edit-serve] edit-train failed with exit code {code}", err=True)
        raise typer.Exit(code)


def _check_artifacts(model: Path, editor: Path | None) -> None:
    """Fail fast (before Ray starts) on directories that cannot hold a model or an editor."""
    weights = (
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
    )
    problems = []
    if not (model / "config.json").is_file():
        problems.append(f"--model {model}: no config.json")
    if not any((model / w).is_file() for w in weights):
        problems.append(f"--model {model}: no weights ({', '.join(weights)})")
    if editor is None:
        needs: tuple[str, ...] = ()
    elif (editor / "serac.json").is_file():
        needs = ("classifier", "counterfactual")
    else:
        needs = ("config.json", "editor.safetensors")
    for name in needs:
        if not (editor / name).exists():
            problems.append(f"--editor {editor}: no {name}")
    if problems:
        raise typer.BadParameter("; ".join(problems))


@app.command()
def serve(
    model: Path = typer.Option(None, help="HF model directory (default: runs/default/model)"),
    editor: Path = typer.Option(
        None,
        help="MendEditor directory (default: runs/default/lifelong; runs/default/editor is plain MEND), a "
        "SERAC directory (runs/default/serac), or rome, memit, alphaedit, kn, grace or editcache: an editor "
        "that needs no training",
    ),
    stats_corpus: str = typer.Option(
        None,
        help="key statistics corpus of rome/memit/alphaedit (text file, saved datasets directory or "
        "hf:NAME[:CONFIG]:SPLIT; default <model>/../data/corpus.txt, else the built-in world's)",
    ),
    journal: Path = typer.Option(None, help="journal directory (default: <model>/../journal)"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback must be asked for"),
    port: int = typer.Option(50051, min=0, max=65535, help="port (0 = a free one, printed at start)"),
    num_gpus: int = typer.Option(0, min=0, help="GPUs for each replica; its model is split over them"),
    replicas: int = typer.Option(
        1, min=1, help="full copies of the model; replica 0 leads, every edit is on all before its reply"
    ),
    token: str = typer.Option(None, envvar="EDIT_SERVE_TOKEN", help="require this token for Edit/Rollback"),
    tls_cert: Path = typer.Option(None, exists=True, dir_okay=False, help="PEM certificate (TLS)"),
    tls_key: Path = typer.Option(None, exists=True, dir_okay=False, help="PEM private key (TLS)"),
    skip_corrupt: list[int] = typer.Option([], help="journal entry (seq) to quarantine; repeatable"),
    max_edit_norm: float = typer.Option(
        ServeLimits.max_edit_norm, help="refuse edits whose update norm exceeds this"
    ),
    max_new_tokens: int = typer.Option(ServeLimits.max_new_tokens, min=1, help="limit per Generate"),
    max_prompt_tokens: int = typer.Option(ServeLimits.max_prompt_tokens, min=1, help="limit per prompt"),
    max_concurrent: int = typer.Option(
        ServeLimits.max_concurrent_generations, min=1, help="generations at once"
    ),
    ray_num_gpus: int = typer.Option(
        None, help="GPUs to declare to the local Ray instance (default: detect)"
    ),
) -> None:
    """Start Ray Serve with the model + editor and the gRPC front; Ctrl-C (SIGINT/SIGTERM) stops."""
    from edit_serve.deployment import SidecarSettings, start_sidecar

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # the sidecar never phones home

    if model is None and editor is None:
        model, editor = DEFAULT_RUN / "model", DEFAULT_RUN / "lifelong"
        if not (model / "config.json").is_file() or not (editor / "config.json").is_file():
            _run_default_job()
    if model is None or editor is None:
        raise typer.BadParameter("give both --model and --editor (or neither for runs/default)")
    named = str(editor).lower() in UNTRAINED_EDITORS
    for what, path in (("--model", model), ("--editor", editor)):
        if not path.is_dir() and not (what == "--editor" and named):
            raise typer.BadParameter(
                f"{what} {path} is not a directory (nor one of {sorted(UNTRAINED_EDITORS)})"
            )
    _check_artifacts(model, None if named else editor)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    journal = journal or model.resolve().parent / "journal"
    if host not in LOOPBACK:
        typer.echo(
            f"[edit-serve] WARNING: listening on {host}, not loopback"
            + ("" if token else "; Edit/Rollback are open to anyone who can reach it (use --token)")
            + ("" if tls_cert else "; traffic is unencrypted (use --tls-cert/--tls-key)"),
            err=True,
        )
    # Check the journal here, before Ray starts: a corrupt journal refuses to start with a clear message.
    try:
        with EditJournal(journal, skip=skip_corrupt) as j:
            for note in j.notes:
                typer.echo(f"[edit-serve] journal: {note}")
            typer.echo(f"[edit-serve] journal {journal}: {len(j.entries)} entries, version {j.last_seq}")
    except (JournalCorruptError, JournalLockedError) as err:
        typer.echo(f"[edit-serve] {err}", err=True)
        raise typer.Exit(2) from err
    limits = ServeLimits(
        max_edit_norm=max_edit_norm,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        max_concurrent_generations=max_concurrent,
    )
    settings = SidecarSettings(
        model=str(model),
        editor=str(editor),
        journal=str(journal),
        host=host,
        port=port,
        num_gpus=num_gpus,
        token=token,
        tls_cert=str(tls_cert) if tls_cert else None,
        tls_key=str(tls_key) if tls_key else None,
        limits=limits,
        ray_num_gpus=ray_num_gpus,
        stats_corpus=stats_corpus,
        replicas=replicas,
    )
    try:
        sidecar = start_sidecar(settings)
    except (RuntimeError, OSError, ValueError) as err:
        typer.echo(f"[edit-serve] could not start: {err}", err=True)
        raise typer.Exit(1) from err
    copies = f", {replicas} replicas" if replicas > 1 else ""
    typer.echo(f"[edit-serve] serving {model} on {sidecar.address} (journal {journal}{copies})", err=False)
    sys.stdout.flush()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    typer.echo("[edit-serve] stopping")
    sidecar.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
