"""GRACE and the edit cache: edits as memory entries, the base weights never touched."""

from __future__ import annotations

import pytest
import torch

from editor_nets.baselines import EditorSetup, build_editors
from editor_nets.evaluate import evaluate_editor
from editor_nets.grace import Codebook, EditCacheEditor, GraceEditor
from editor_nets.scoring import edit_batch, score_targets
from editor_nets.state import weights_digest
from tiny_models import build_tiny, world_tokenizer

pytestmark = pytest.mark.integration


def _logits(learnt, prompts, targets) -> torch.Tensor:
    batch = edit_batch(learnt.model, learnt.tokenizer, prompts, targets, kind="causal")
    with torch.no_grad():
        return learnt.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("make", [GraceEditor, EditCacheEditor], ids=["GRACE", "EditCache"])
def test_memory_editors_edit_without_touching_weights_and_removal_restores_exactly(learnt, make) -> None:
    editor = make()
    edited, other = learnt.known[0], learnt.known[5]
    new = next(r.original for r in learnt.known if r.original != edited.original)
    record = type(edited)(**{**edited.__dict__, "target": new})
    prompts, answers = [record.prompt, other.prompt], [new, other.original]
    digest = weights_digest(learnt.model)
    with torch.no_grad(), editor.attached(learnt.model):
        base = _logits(learnt, prompts, answers)
        editor.edit(learnt.model, learnt.tokenizer, [record])
        hit = score_targets(learnt.model, learnt.tokenizer, prompts, answers).exact
        assert bool(hit[0]), "the edit's prompt gives the new target"
        assert bool(hit[1]), "another subject's answer is kept"
        editor.remove(0)
        torch.testing.assert_close(_logits(learnt, prompts, answers), base, rtol=0, atol=0)
    assert weights_digest(learnt.model) == digest  # the base weights are bitwise unchanged


def test_grace_keeps_earlier_edits_and_the_evaluation_leaves_the_model_bitwise(learnt) -> None:
    grace = GraceEditor()
    records = learnt.known[:10]
    digest = weights_digest(learnt.model)
    report = evaluate_editor(learnt.model, learnt.tokenizer, grace, records, mode="sequential", n_sequential=10,
                             progress=False)  # fmt: skip
    assert report["es_edit"] == 1.0  # all ten edits of the run still hold after the tenth
    assert weights_digest(learnt.model) == digest and len(grace.entries) == 0  # start() after the run


def test_codebook_radii_depend_on_the_entries_alone_and_survive_save_and_load(tmp_path) -> None:
    keys = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0]])
    book = Codebook(keys, torch.eye(3), torch.full((3,), 3.0), ("a", "b", "a"))
    # entry 0 and 1 conflict (targets differ): both radii cut to half their distance
    torch.testing.assert_close(book.effective_radii(), torch.tensor([0.5, 0.5, 3.0]))
    assert torch.equal(book.without(1).effective_radii(), torch.tensor([3.0, 3.0]))
    rows = torch.tensor([[[9.0, 9.0], [0.9, 0.1], [0.0, 0.0]], [[9.0, 9.0], [0.2, 9.5], [5.0, 5.0]]])
    position, entry = book.lookup(rows)  # the closest match relative to the radius; none: -1
    assert position.tolist() == [2, 1] and entry.tolist() == [0, 2]
    assert book.lookup(torch.full((1, 2, 2), 50.0))[0].tolist() == [-1]
    book.save(tmp_path / "codebook.safetensors")
    loaded = Codebook.load(tmp_path / "codebook.safetensors")
    assert loaded.targets == book.targets and torch.equal(loaded.keys, book.keys)
    with pytest.raises(IndexError, match="entry 3"):
        book.without(3)


def test_the_registry_builds_them_and_they_refuse_seq2seq_models() -> None:
    editors = build_editors(["GRACE", "EditCache"], EditorSetup())
    assert isinstance(editors["GRACE"], GraceEditor) and isinstance(editors["EditCache"], EditCacheEditor)
    from edit_data import build_world

    world = build_world(n_entities=6, seed=0)
    tokenizer = world_tokenizer("t5", world.corpus)
    model = build_tiny("t5", tokenizer=tokenizer)
    for editor in editors.values():
        with pytest.raises(ValueError, match="causal language models"):
            editor.edit(model, tokenizer, world.records[:1])


def test_entry_tables_join_in_order_and_go_to_plain_data_and_back() -> None:
    from editor_nets.grace import EditCache
    from editor_nets.serac import EditMemory

    tables = [
        Codebook(torch.eye(2), torch.ones(2, 3), torch.tensor([1.0, 2.0]), ("a", "b")),
        EditMemory(("p",), ("t",), torch.ones(1, 4)),
        EditCache(((1, 2), (3,)), ((4,), (5, 6))),
    ]
    for table in tables:
        both = type(table)().joined([table, table])  # the empty table joins away
        assert len(both) == 2 * len(table)
        back = type(table).from_state(*both.to_state())
        assert back.digest() == both.digest() and back.digest() != table.digest()
        for _ in range(len(table)):  # dropping the first copy's entries leaves the second
            back = back.without(0)
        assert back.digest() == table.digest()
    with pytest.raises(ValueError, match="2 entries has 1 rows in its field 'radii'"):
        Codebook.from_state(
            {"keys": torch.eye(2), "values": torch.ones(2, 3), "radii": torch.ones(1)},
            {"targets": ["a", "b"]},
        )
