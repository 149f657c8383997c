"""ENN: the base model trained to be editable through a differentiable inner gradient step."""

from __future__ import annotations

import copy

import pytest
from world_models import changed, param_state, world_gpt2

from editor_nets.enn import EnnConfig, EnnEditor, enn_train
from editor_nets.scoring import score_targets
from editor_nets.state import restore_weights

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained():
    model, tok, world = world_gpt2(0)
    enn = copy.deepcopy(model)
    editor, log = enn_train(enn, tok, world.records[:40], EnnConfig(steps=10), progress=False)
    return model, enn, tok, world, editor, log


def test_training_goes_through_the_inner_step_and_learns_the_step_sizes(trained) -> None:
    model, enn, _, _, editor, log = trained
    assert len(log) == 10 and log[-1]["edit"] < log[0]["edit"]  # post-edit NLL falls as it trains
    assert changed(enn, param_state(model))  # ENN trains the base model itself
    sizes = {float(v.exp()) for v in editor.log_step_sizes.values()}
    assert all(abs(s - 1e-2) > 1e-5 for s in sizes)  # the step sizes got meta-gradients


def test_an_enn_edit_reaches_the_target_and_changes_only_the_edited_weights(trained) -> None:
    _, enn, tok, world, editor, _ = trained
    records = world.records[40:50]
    before = param_state(enn)
    hits = 0
    for record in records:
        snapshot = editor.edit(enn, tok, [record])
        assert changed(enn, before) <= set(editor.log_step_sizes)
        hits += int(bool(score_targets(enn, tok, [record.prompt], [record.target]).exact[0]))
        restore_weights(enn, snapshot)
        assert not changed(enn, before)
    assert hits >= 8, f"{hits} of 10 held-out ENN edits hit their target"


def test_an_editor_without_training_refuses() -> None:
    model, tok, world = world_gpt2(0)
    before = param_state(model)
    with pytest.raises(ValueError, match="enn_train"):
        EnnEditor().edit(model, tok, world.records[:1])
    assert not changed(model, before)


def test_enn_trains_a_model_loaded_with_gradients_off_and_gives_the_flags_back() -> None:
    model, tok, world = world_gpt2(0)
    model.requires_grad_(False)  # as a model loaded for serving
    before = param_state(model)
    _, log = enn_train(model, tok, world.records[:4], EnnConfig(steps=1, batch_size=2), progress=False)
    assert len(log) == 1 and changed(model, before)
    assert not any(p.requires_grad for p in model.parameters())
