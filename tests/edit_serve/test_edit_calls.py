"""Several corrections in one Edit call, refused whole when one is bad; the key memory of a
least-squares (lifelong) editor follows the active edits through rollback and restart."""

from __future__ import annotations

import pytest
import torch

from edit_serve import EditItem, EditJournal, EditService, ServeError, weights_digest
from edit_serve.loading import load_served
from editor_nets import MendConfig, MendEditor
from editor_nets.ridge import KeyMemory, preserved_moments


def _state(service) -> tuple:
    files = sorted(p.name for p in service.journal.directory.iterdir())
    return weights_digest(service.model), service.version, len(service.journal.entries), files


def test_several_corrections_are_one_version_and_one_journal_entry(make_service, tiny_artifacts) -> None:
    s = make_service()
    items = [EditItem(p, t) for p, t in tiny_artifacts.prompts[:3]]
    r = s.edit(items, provenance={"ticket": "7"})
    assert r.version == 1 and len(s.journal.entries) == 1 and len(r.items) == 3
    assert (r.target_logprob_before, r.target_logprob_after) == (
        r.items[0].target_logprob_before,
        r.items[0].target_logprob_after,
    )
    assert sum(x.target_logprob_after - x.target_logprob_before for x in r.items) > 0
    info = s.get_edit(r.edit_id)
    assert [(x.prompt, x.target) for x in info.items] == [(x.prompt, x.target) for x in items]
    assert s.edit(items, idempotency_key="").version == 2  # no key: applied again
    again = s.edit(items, idempotency_key="batch")
    assert s.edit(items, idempotency_key="batch").replayed and s.version == again.version


@pytest.mark.parametrize(
    ("bad", "limits", "code", "text"),
    [
        (EditItem("Who?", ""), {}, "INVALID_ARGUMENT", "edits[1].target is empty"),
        (EditItem("Who?", "y", ("",)), {}, "INVALID_ARGUMENT", "edits[1].rephrases[0] is empty"),
        (
            EditItem("word " * 60, "y"),
            {"max_prompt_tokens": 40},
            "RESOURCE_EXHAUSTED",
            "edits[1].prompt + target",
        ),
        (None, {"max_edit_norm": 1e-9}, "FAILED_PRECONDITION", "edits[0]: the edit's update norm"),
    ],
)
def test_one_bad_correction_refuses_the_whole_call(
    make_service, tiny_artifacts, bad, limits, code, text
) -> None:
    s = make_service(**limits)
    (p0, t0), (p1, t1) = tiny_artifacts.prompts[:2]
    items = [EditItem(p0, t0), bad or EditItem(p1, t1), EditItem(*tiny_artifacts.prompts[2])]
    state = _state(s)
    with pytest.raises(ServeError) as err:
        s.edit(items)
    assert err.value.code == code and text in err.value.message, err.value.message
    assert _state(s) == state


def _moments(memory: KeyMemory) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in memory.edits.items()}


def test_a_lifelong_editors_memory_follows_the_active_edits(tiny_artifacts, tmp_path) -> None:
    def service() -> EditService:
        loaded = load_served(tiny_artifacts.model_dir, tiny_artifacts.editor_dir)
        editor = MendEditor.for_model(loaded.model, MendConfig(rank=8, alpha_init=0.5, aggregation="ridge"))
        texts = [p for p, _ in tiny_artifacts.prompts]
        editor.set_preserved(preserved_moments(loaded.model, loaded.tokenizer, texts, editor.targets))
        return EditService(loaded.model, loaded.tokenizer, editor, EditJournal(tmp_path / "journal"))

    s = service()
    ids = [s.edit(EditItem(p, t)).edit_id for p, t in tiny_artifacts.prompts[:3]]
    deltas = dict(s.store.active)
    assert all(layer.keys is not None for d in deltas.values() for layer in d.layers.values())
    assert all(any(k.endswith(".keys") for k in s.journal.load_tensors(e)) for e in s.journal.entries)
    s.rollback(edit_id=ids[1])
    expected = KeyMemory.of([deltas[ids[0]], deltas[ids[2]]])
    kept = _moments(s._memory)
    assert s._memory.n_edits == 2 and set(kept) == set(expected.edits)
    assert all(torch.equal(kept[k], expected.edits[k]) for k in kept)  # recomputed in order, bitwise
    digest = weights_digest(s.model)
    s.close()
    restarted = service()
    assert weights_digest(restarted.model) == digest
    assert all(torch.equal(restarted._memory.edits[k], kept[k]) for k in kept)
    restarted.close()
