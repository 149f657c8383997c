"""KnowledgeEditor: a hypernetwork conditioned on the edit turns its gradient into the update."""

from __future__ import annotations

import pytest
from world_models import changed, param_state, world_gpt2

from editor_nets.knowledge_editor import KnowledgeEditorConfig, train_knowledge_editor
from editor_nets.scoring import score_targets
from editor_nets.state import restore_weights

pytestmark = pytest.mark.integration


def test_a_trained_knowledge_editor_moves_held_out_edits_to_their_targets() -> None:
    model, tok, world = world_gpt2(0)
    base = param_state(model)
    editor, log = train_knowledge_editor(model, tok, world.records[:40], KnowledgeEditorConfig(steps=150),
                                         progress=False)  # fmt: skip
    assert not changed(model, base)  # training leaves the model as it was
    assert log[-1]["edit"] < 0.7 * log[0]["edit"]
    held_out = world.records[40:]
    missed = score_targets(model, tok, [r.prompt for r in held_out], [r.target for r in held_out]).exact
    records = [r for r, hit in zip(held_out, missed.tolist(), strict=True) if not hit][:10]
    before = score_targets(model, tok, [r.prompt for r in records], [r.target for r in records])
    hits, nll = 0, []
    for record in records:
        delta = editor.compute_delta(model, tok, [record])
        assert max(layer.u.shape[0] for layer in delta.layers.values()) <= 1 + 32  # low rank: tokens + 1
        snapshot = editor.edit(model, tok, [record])
        assert changed(model, base) <= {f"{t}.weight" for t in editor.targets}
        after = score_targets(model, tok, [record.prompt], [record.target])
        hits += int(bool(after.exact[0]))
        nll.append(float(after.mean_nll[0]))
        restore_weights(model, snapshot)
    assert not changed(model, base)
    assert sum(nll) / len(nll) < float(before.mean_nll.mean()) - 0.3
    assert hits >= 3, f"{hits} of {len(records)} held-out KE edits hit their target"


def test_a_saved_knowledge_editor_loads_to_the_same_edits(tmp_path) -> None:
    import json

    import torch

    from editor_nets.knowledge_editor import KnowledgeEditor

    model, tok, world = world_gpt2(0)
    editor, _ = train_knowledge_editor(model, tok, world.records[:8], KnowledgeEditorConfig(hidden=16, steps=3),
                                       progress=False)  # fmt: skip
    editor.save_pretrained(tmp_path / "ke")
    loaded = KnowledgeEditor.from_pretrained(tmp_path / "ke", model)
    a, b = (e.compute_delta(model, tok, world.records[10:11]) for e in (editor, loaded))
    assert a.layers.keys() == b.layers.keys()
    for name in a.layers:
        assert torch.equal(a.layers[name].u, b.layers[name].u)
        assert torch.equal(a.layers[name].delta, b.layers[name].delta)
        assert a.layers[name].alpha == b.layers[name].alpha
    cfg = tmp_path / "ke" / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "editor": "MEND"}))
    with pytest.raises(ValueError, match="not a KnowledgeEditor checkpoint"):
        KnowledgeEditor.from_pretrained(tmp_path / "ke", model)
