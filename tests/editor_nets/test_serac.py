"""SERAC: edits as memory entries routed by a scope classifier to a counterfactual model; the base
weights never change and removing an entry restores the base answers exactly."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from editor_nets.evaluate import evaluate_editor
from editor_nets.scoring import edit_batch, score_targets
from editor_nets.serac import (
    EditMemory,
    ScopeClassifier,
    SeracConfig,
    SeracEditor,
    _edit_context,
    scope_accuracy,
    scope_pairs,
    train_serac,
)
from editor_nets.state import weights_digest
from tiny_models import build_tiny

pytestmark = pytest.mark.integration

# a tiny BERT encoder on the world's own tokenizer stands in for MiniLM (same code path, seconds)
CONFIG = SeracConfig(classifier_steps=200, classifier_batch=32, classifier_lr=2e-3, cf_steps=400, cf_batch=16)


@pytest.fixture(scope="module")
def serac(learnt):
    train, held_out = learnt.known[:-6], learnt.known[-6:]
    encoder = build_tiny("bert", tokenizer=learnt.tokenizer).bert
    editor, summary = train_serac(
        learnt.model, learnt.tokenizer, train, CONFIG, held_out=held_out,
        classifier=ScopeClassifier(encoder, learnt.tokenizer), progress=False,
    )  # fmt: skip
    return editor, summary, held_out


def _counterfactual(record, learnt):
    """``record`` asking for another subject's answer (an answer the model knows as a token)."""
    new = next(r.original for r in learnt.known if r.original != record.original)
    return dataclasses.replace(record, target=new)


def _logits(learnt, prompts, targets) -> torch.Tensor:
    batch = edit_batch(learnt.model, learnt.tokenizer, prompts, targets, kind="causal")
    with torch.no_grad():
        return learnt.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_serac_edits_without_touching_the_weights_and_removal_restores_exactly(learnt, serac):
    editor, _, _ = serac
    train = learnt.known[:-6]
    learnt_pairs = scope_accuracy(editor.classifier, scope_pairs(train, learnt.tokenizer, random.Random(1)))
    assert learnt_pairs["all"] >= 0.9, learnt_pairs  # the classifier learnt its training pairs
    # the tiny counterfactual model reads targets it was trained to read (on the default world it
    # answers held-out edits too: the closing notes' figures); the routing is the same either way
    records = train[:6]
    others = [r for r in learnt.known if r.subject not in {x.subject for x in records}][:6]
    prompts, answers = [r.prompt for r in others], [r.original for r in others]
    digest = weights_digest(learnt.model)
    editor.start()
    with editor.attached(learnt.model):
        base = _logits(learnt, prompts, answers)
        editor.edit(learnt.model, learnt.tokenizer, records)
        hits = score_targets(
            learnt.model, learnt.tokenizer, [r.prompt for r in records], [r.target for r in records]
        ).exact
        assert float(hits.float().mean()) >= 0.5, f"the edits reach their targets on {hits.tolist()}"
        for i in reversed(range(len(records))):
            editor.remove(i)
        torch.testing.assert_close(_logits(learnt, prompts, answers), base, rtol=0, atol=0)
        assert bool(score_targets(learnt.model, learnt.tokenizer, prompts, answers).exact.all())
    assert weights_digest(learnt.model) == digest  # the base weights are bitwise unchanged


def test_routed_positions_carry_the_counterfactual_models_logits(learnt, serac):
    editor, _, held_out = serac
    record = _counterfactual(held_out[0], learnt)
    editor.start()
    editor.edit(learnt.model, learnt.tokenizer, [record])
    batch = edit_batch(learnt.model, learnt.tokenizer, [record.prompt], [record.target], kind="causal")
    row = batch["input_ids"][0].tolist()
    [(position, _)] = editor.routes([row])
    with torch.no_grad():
        base = learnt.model(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits[0]
        context = _edit_context(learnt.tokenizer, record.prompt, record.target)
        cf = editor.counterfactual(input_ids=torch.tensor([context + row])).logits[0, len(context) :]
    with editor.attached(learnt.model):
        routed = _logits(learnt, [record.prompt], [record.target])[0]
    torch.testing.assert_close(routed[:position], base[:position], rtol=0, atol=0)
    torch.testing.assert_close(routed[position:], cf[position:])
    editor.start()


def test_out_of_scope_queries_keep_the_base_logits_bitwise_and_routing_is_causal(learnt, serac):
    editor, _, held_out = serac
    record = _counterfactual(held_out[0], learnt)
    editor.start()
    editor.edit(learnt.model, learnt.tokenizer, [record])
    ids = edit_batch(learnt.model, learnt.tokenizer, [record.prompt], [record.target], kind="causal")[
        "input_ids"
    ]
    row = ids[0].tolist()
    (position, entry), none = editor.routes([row]) + editor.routes([row[:1]])
    assert entry == 0 and none is None  # a one-token prefix is not the question
    # the decision at a position depends on the tokens up to it: a longer row routes at the same place
    assert editor.routes([row + row[-1:]])[0] == (position, 0)
    editor.start()
    assert editor.routes([row]) == [None] and len(editor.entries) == 0


def test_prefix_embeddings_are_kept_between_forward_passes_and_bounded(learnt, serac, monkeypatch):
    """A decoding step routes the last step's sequence plus one token: only the new prefix is
    embedded (the sidecar enters ``attached`` once per step), and the kept embeddings are bounded."""
    import editor_nets.serac as serac_module

    editor, _, held_out = serac
    record = _counterfactual(held_out[0], learnt)
    editor.start()
    editor.prefix_embeddings.clear()
    editor.edit(learnt.model, learnt.tokenizer, [record])
    row = edit_batch(learnt.model, learnt.tokenizer, [record.prompt], [record.target], kind="causal")[
        "input_ids"
    ][0].tolist()
    embedded: list[int] = []
    real = editor.classifier.embed
    monkeypatch.setattr(editor.classifier, "embed", lambda texts: embedded.append(len(texts)) or real(texts))
    first = editor.routes([row])
    assert sum(embedded) > 1
    seen = sum(embedded)
    assert editor.routes([row]) == first and sum(embedded) == seen  # nothing new to embed
    editor.routes([row + row[-1:]])
    assert sum(embedded) == seen + 1
    monkeypatch.setattr(serac_module, "PREFIX_CACHE_SIZE", 3)
    assert editor.routes([row]) == first and len(editor.prefix_embeddings) == 3
    editor.start()


def test_memory_and_editor_survive_save_and_load(learnt, serac, tmp_path):
    editor, _, held_out = serac
    records = [_counterfactual(r, learnt) for r in held_out[:2]]
    editor.start()
    editor.edit(learnt.model, learnt.tokenizer, records)
    editor.save_pretrained(tmp_path / "serac")
    loaded = SeracEditor.from_pretrained(tmp_path / "serac")
    assert (
        loaded.entries.prompts == editor.entries.prompts and loaded.entries.targets == editor.entries.targets
    )
    torch.testing.assert_close(loaded.entries.keys, editor.entries.keys)
    with editor.attached(learnt.model):
        want = _logits(learnt, [r.prompt for r in records], [r.target for r in records])
    with loaded.attached(learnt.model):
        got = _logits(learnt, [r.prompt for r in records], [r.target for r in records])
    torch.testing.assert_close(got, want)
    editor.start()


def test_the_harness_runs_serac_in_sequence_and_leaves_the_model_bitwise(learnt, serac):
    editor, _, held_out = serac
    digest = weights_digest(learnt.model)
    records = [_counterfactual(r, learnt) for r in held_out]
    report = evaluate_editor(learnt.model, learnt.tokenizer, editor, records, mode="sequential", n_sequential=6, progress=False)  # fmt: skip
    assert report["editor_params"] > sum(p.numel() for p in learnt.model.parameters())  # classifier + copy
    assert report["n_failed_edits"] == 0 and len(editor.entries) == 0  # start() after the run
    assert weights_digest(learnt.model) == digest


def test_memory_removal_of_a_missing_entry_and_scope_pairs_are_clear(learnt):
    with pytest.raises(IndexError, match="entry 0"):
        EditMemory().without(0)
    kinds = {k for _, _, _, k in scope_pairs(learnt.known[:4], learnt.tokenizer, random.Random(0))}
    assert {"rephrase", "locality", "other", "prefix"} <= kinds


def test_inputs_longer_than_the_models_positions_are_refused_before_training(learnt):
    """An edit in front of a query must fit the position table (a GPT-2 indexes past it otherwise)."""
    model = copy.deepcopy(learnt.model)
    key = "n_positions" if hasattr(model.config, "n_positions") else "max_position_embeddings"
    setattr(model.config, key, 8)
    with pytest.raises(ValueError, match=r"training record 0 .* more than the model's 8 positions"):
        train_serac(model, learnt.tokenizer, learnt.known[:4], CONFIG, progress=False)
