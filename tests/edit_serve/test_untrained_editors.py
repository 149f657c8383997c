"""``edit-serve --editor rome`` (and memit, alphaedit, kn): editors without a trained directory are
served with the same journal, exact rollback and restart replay as MEND's edits."""

from __future__ import annotations

import pytest
from world_models import saved_world_gpt2

from edit_data import save_records
from edit_serve import EditItem, ServeError
from edit_serve.loading import load_served


@pytest.fixture(scope="module")
def served_layout(tmp_path_factory):
    """``root/model`` (a tiny GPT-2 of the model table taught the world's answers) and ``root/data``
    (corpus.txt and the edit splits), as ``edit-train`` leaves them: the statistics and the fact
    locating read them by default."""
    root = tmp_path_factory.mktemp("run")
    *_, world = saved_world_gpt2(root)
    save_records({"train": world.records[:30], "validation": [], "test": world.records[30:]}, root / "data")
    (root / "data" / "corpus.txt").write_text("".join(line + "\n" for line in world.corpus))
    return root, world


@pytest.mark.parametrize("name", ["rome", "alphaedit"])
def test_untrained_editor_serves_edits_rollback_and_replay(name, served_layout, serve_dirs, tmp_path) -> None:
    root, world = served_layout
    r1, r2 = world.records[30], world.records[40]
    service = serve_dirs(root / "model", name, tmp_path / "journal")
    try:
        assert service.editor.name == {"rome": "ROME", "alphaedit": "AlphaEdit"}[name]
        assert service.editor.statistics.source.endswith("corpus.txt")
        digest0 = service.health(with_digest=True).weights_sha256
        first = service.edit(EditItem(r1.prompt, r1.target, subject=r1.subject))
        assert first.target_logprob_after > first.target_logprob_before + 1.0
        second = service.edit(EditItem(r2.prompt, r2.target, subject=r2.subject))
        assert second.version == first.version + 1
        digest2 = service.health(with_digest=True).weights_sha256
    finally:
        service.close()
    service = serve_dirs(root / "model", name, tmp_path / "journal")  # a restart replays the journal
    try:
        assert service.health(with_digest=True).weights_sha256 == digest2
        service.rollback(edit_id=second.edit_id)
        service.rollback(edit_id=first.edit_id)
        assert service.health(with_digest=True).weights_sha256 == digest0
    finally:
        service.close()


def test_an_edit_without_its_subject_is_refused_and_changes_nothing(
    tiny_artifacts, serve_dirs, tmp_path
) -> None:
    """With no edit data beside the model, ROME keys on the subject's last token (the papers' site)."""
    prompt, target = tiny_artifacts.prompts[0]
    service = serve_dirs(tiny_artifacts.model_dir, "rome", tmp_path / "journal")
    try:
        assert service.editor.fact_token == "subject_last"
        assert "world" in service.editor.statistics.source  # the built-in world's corpus
        digest = service.health(with_digest=True).weights_sha256
        for subject in ("", "Nobody"):
            with pytest.raises(ServeError, match="subject") as err:
                service.edit(EditItem(prompt, target, subject=subject))
            assert err.value.code == "INVALID_ARGUMENT"
        assert service.version == 0 and service.health(with_digest=True).weights_sha256 == digest
        assert not service.journal.entries
    finally:
        service.close()


def test_an_unknown_editor_name_is_a_missing_directory(tiny_artifacts) -> None:
    with pytest.raises(FileNotFoundError, match="editor directory"):
        load_served(tiny_artifacts.model_dir, "serac")
