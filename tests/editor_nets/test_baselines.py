"""FT and FT+KL baselines: success, bounded steps, only the edited layers change, locality term."""

from __future__ import annotations

import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from world_models import EDITED, changed, param_state, world_gpt2  # noqa: E402

from edit_data import EditRecord, LocalityExample, train_tokenizer  # noqa: E402
from editor_nets import default_targets, edit_batch, restore_weights  # noqa: E402
from editor_nets.baselines import (  # noqa: E402
    EDITORS,
    EditorSetup,
    FTEditor,
    FTKLEditor,
    build_editors,
    locality_examples_from,
)
from editor_nets.evaluate import pre_edit_scores  # noqa: E402
from editor_nets.scoring import model_logits, score_targets  # noqa: E402
from tiny_models import TINY_MODELS, build_tiny  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """A 3-block GPT-2 pre-trained for a few seconds on a small synthetic world."""
    model, tok, world = world_gpt2(0, world_seed=1)
    pre = pre_edit_scores(model, tok, world.records)
    misses = [r for r, s in zip(world.records, pre, strict=True) if not bool(s.edit.exact[0])]
    hits = [r for r, s in zip(world.records, pre, strict=True) if bool(s.edit.exact[0])]
    return model, tok, misses, hits


def test_ft_succeeds_and_changes_only_edited_weights(trained):
    model, tok, misses, _ = trained
    before = param_state(model)
    ft = FTEditor(targets=EDITED, lr=3e-3, max_steps=40)
    for record in misses[:3]:
        snapshot = ft.edit(model, tok, [record])
        assert set(snapshot) == {f"{t}.weight" for t in EDITED}
        assert ft.last.success and 1 <= ft.last.steps <= 40
        assert bool(score_targets(model, tok, [record.prompt], [record.target]).exact[0])
        assert changed(model, before) <= set(snapshot) and changed(model, before)
        assert all(not p.requires_grad or p.grad is None for p in model.parameters())
        restore_weights(model, snapshot)
        assert not changed(model, before)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_ft_batched_edit_hits_every_target(trained):
    model, tok, misses, _ = trained
    before = param_state(model)
    ft = FTEditor(targets=EDITED, lr=1e-2, max_steps=80)
    recs = misses[:3]
    snapshot = ft.edit(model, tok, recs)
    assert ft.last.success
    assert score_targets(model, tok, [r.prompt for r in recs], [r.target for r in recs]).exact.all()
    restore_weights(model, snapshot)
    assert not changed(model, before)


def test_ft_stops_at_success_and_respects_max_steps(trained):
    model, tok, misses, hits = trained
    before = param_state(model)
    assert hits  # a target the model already produces: zero steps, nothing changes
    ft = FTEditor(targets=EDITED)
    ft.edit(model, tok, [hits[0]])
    assert ft.last.steps == 0 and ft.last.success
    assert not changed(model, before)
    ft = FTEditor(targets=EDITED, lr=1e-7, max_steps=2, optimizer="sgd")
    snapshot = ft.edit(model, tok, [misses[0]])
    assert ft.last.steps == 2 and not ft.last.success
    restore_weights(model, snapshot)
    ft = FTEditor(targets=EDITED, max_steps=0)
    ft.edit(model, tok, [misses[0]])
    assert ft.last.steps == 0 and not ft.last.success and not changed(model, before)


def test_ft_until_replaces_the_stopping_rule_and_times_only_the_steps(trained):
    """``until`` is checked after every step with gradients off; FT runs on past edit success until it
    holds, and ``step_seconds`` counts the steps but not the checks."""
    model, tok, misses, _ = trained
    before = param_state(model)
    calls: list[bool] = []

    def after_five_steps() -> bool:
        calls.append(torch.is_grad_enabled())
        time.sleep(0.2)  # a slow check: counted, it would add >= 1 s over the 5 in-loop calls
        return len(calls) > 5  # the first call comes before any step

    ft = FTEditor(targets=EDITED, lr=1e-2, max_steps=40, until=after_five_steps)
    snapshot = ft.edit(model, tok, [misses[0]])
    assert ft.last.steps == 5 and len(calls) == 6 and not any(calls)
    assert 0 < ft.last.step_seconds < 1.0  # five steps of a tiny model, without the checks
    restore_weights(model, snapshot)
    assert not changed(model, before)


def test_ft_kl_lowers_locality_drift(trained):
    model, tok, misses, _ = trained
    before = param_state(model)
    recs = misses[:6]
    loc = locality_examples_from(recs)
    batch = edit_batch(model, tok, [e.prompt for e in loc], [e.answer for e in loc])
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        ref = torch.log_softmax(model_logits(model, batch, "causal"), -1)

    def drift(editor):
        snapshot = editor.edit(model, tok, recs)
        with torch.no_grad():
            post = torch.log_softmax(model_logits(model, batch, "causal"), -1)
        restore_weights(model, snapshot)
        kl = (ref.exp() * (ref - post)).sum(-1)[mask].mean().item()
        agree = (post.argmax(-1) == ref.argmax(-1))[mask].float().mean().item()
        return kl, agree

    kl_ft, agree_ft = drift(FTEditor(targets=EDITED, lr=3e-3, max_steps=40))
    kl_ftkl, agree_ftkl = drift(
        FTKLEditor(targets=EDITED, lr=3e-3, max_steps=40, locality=loc, n_locality=len(loc))
    )
    assert kl_ftkl < 0.5 * kl_ft
    assert agree_ftkl > agree_ft
    assert not changed(model, before)


def test_ft_kl_without_locality_warns_and_uses_the_records(trained):
    model, tok, misses, _ = trained
    before = param_state(model)
    editor = FTKLEditor(targets=EDITED, max_steps=3)
    with pytest.warns(UserWarning, match="locality"):
        snapshot = editor.edit(model, tok, misses[:1])
    restore_weights(model, snapshot)
    assert not changed(model, before)


def test_non_finite_edit_changes_nothing(trained):
    model, tok, misses, _ = trained
    before = param_state(model)
    with pytest.raises(FloatingPointError, match="non-finite"):
        FTEditor(targets=EDITED, lr=1e30, max_steps=5, optimizer="sgd").edit(model, tok, [misses[0]])
    assert not changed(model, before)
    assert all(p.requires_grad for p in model.parameters())


def test_registry_and_bad_settings():
    built = build_editors(["FT", "FT+KL"], EditorSetup(targets=EDITED, ft_lr=1e-4, ft_max_steps=7))
    assert list(built) == ["FT", "FT+KL"]
    assert isinstance(built["FT"], FTEditor) and built["FT"].lr == 1e-4 and built["FT"].max_steps == 7
    kl = built["FT+KL"]
    assert isinstance(kl, FTKLEditor) and kl.name == "FT+KL" and kl.targets == EDITED and kl.locality == []
    assert {"FT", "FT+KL", "MEND"} <= set(EDITORS)
    with pytest.raises(KeyError, match="known editors"):
        build_editors(["NoSuchEditor"], EditorSetup())
    with pytest.raises(ValueError, match="needs the model"):
        build_editors(["ROME"], EditorSetup())
    with pytest.raises(ValueError, match="trained editor"):
        build_editors(["MEND"], EditorSetup())
    with pytest.raises(ValueError, match="optimizer"):
        FTEditor(optimizer="lion")
    with pytest.raises(ValueError, match="lr"):
        FTEditor(lr=0.0)
    with pytest.raises(ValueError, match="kl_weight"):
        FTKLEditor(kl_weight=-1.0)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_ft_on_every_family(name):
    spec = TINY_MODELS[name]
    texts = ["Where does Ana live ?", "Paris", "Rome", "the sky is blue", "grass is green", "snow is white"]
    tok = train_tokenizer(texts)
    model = build_tiny(name)
    if spec.kind == "classifier":
        with torch.no_grad():
            pred = int(model(**tok(["the sky is blue"], return_tensors="pt")).logits.argmax(-1))
        record = EditRecord("the sky is blue", ["REFUTES", "SUPPORTS"][1 - pred], task="classification")
    else:
        record = EditRecord("Where does Ana live ?", "Rome", locality=[LocalityExample("grass is", "green")])
    before = param_state(model)
    targets = default_targets(model)
    kl_example = (
        LocalityExample("grass is green", "SUPPORTS")
        if spec.kind == "classifier"
        else LocalityExample("the sky is", "blue")
    )
    editor = FTKLEditor(lr=1e-2, max_steps=60, locality=[kl_example])
    snapshot = editor.edit(model, tok, [record])
    assert editor.last.success
    assert set(snapshot) == {f"{t}.weight" for t in targets}
    assert changed(model, before) <= set(snapshot)
    restore_weights(model, snapshot)
    assert not changed(model, before)


def test_ft_kl_result_does_not_depend_on_the_edits_before_it(trained):
    """Each FT+KL edit draws its locality examples from a generator seeded by the edit itself, so an
    evaluation's figures do not depend on the order of the edits."""
    model, tok, misses, _ = trained
    pool = locality_examples_from(misses[6:12])

    def edited(editor, record):
        snapshot = editor.edit(model, tok, [record])
        weights = {k: model.get_parameter(k).detach().clone() for k in snapshot}
        restore_weights(model, snapshot)
        return weights

    settings = dict(targets=EDITED, lr=3e-3, max_steps=5, locality=pool, n_locality=2)
    alone = edited(FTKLEditor(**settings), misses[1])
    editor = FTKLEditor(**settings)
    edited(editor, misses[0])  # another edit first
    after = edited(editor, misses[1])
    assert all(torch.equal(alone[k], after[k]) for k in alone)
