"""Meta-training: a few steps reduce the edit loss; resume; non-finite steps are skipped."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")

from world_models import param_state  # noqa: E402

from edit_data import build_world, split_records, train_tokenizer  # noqa: E402
from editor_nets import MendConfig, MendEditor, MetaTrainConfig, meta_loss, meta_train, validate_editor  # noqa: E402
from editor_nets.report import MetricsLog  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    world = build_world(n_entities=24, seed=0)
    tok = train_tokenizer(world.corpus + [r.target for r in world.records])
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    splits = split_records(world.records, seed=0)
    return model, tok, splits


def _mean_edit_nll(editor, model, tok, records, config) -> float:
    rng = random.Random(123)  # same rephrasings / locality prompts every time
    editor.train()
    with torch.no_grad():
        losses = [meta_loss(editor, model, tok, [r], config, rng)[1]["nll"] for r in records]
    return sum(losses) / len(losses)


@pytest.mark.slow
def test_meta_training_reduces_edit_loss(setup, tmp_path):
    model, tok, splits = setup
    config = MetaTrainConfig(steps=40, grad_accum=1, lr=3e-3, lr_alpha=3e-2, c_edit=1.0, val_every=20,
                             val_edits=4, patience=10, seed=0)  # fmt: skip
    editor = MendEditor.for_model(model, MendConfig(rank=32, alpha_init=1e-3))  # a weak edit to start from
    held = splits["train"][:8]
    before = _mean_edit_nll(editor, model, tok, held, config)
    weights_before = param_state(model)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    summary = meta_train(editor, model, tok, splits["train"], splits["validation"], config, tmp_path, log=log)
    after = _mean_edit_nll(editor, model, tok, held, config)
    assert after < 0.95 * before, (before, after)  # NLL of the new targets after the edit
    assert summary["steps"] == 40 and summary["skipped_steps"] == 0
    # the base model is untouched and trainable again; the editor learned step sizes
    assert all(torch.equal(v, weights_before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not torch.allclose(editor.alpha, torch.full_like(editor.alpha, 1e-3))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "validation"] == [20, 40]
    assert {"loss", "nll", "kl", "es"} <= set(next(r for r in rows if r.get("phase") == "meta-train"))
    assert (tmp_path / "editor.safetensors").is_file() and (tmp_path / "train_state.pt").is_file()


def test_resume_continues_where_it_stopped(setup, tmp_path):
    model, tok, splits = setup
    config = MetaTrainConfig(steps=4, grad_accum=1, val_every=2, val_edits=2, patience=10)
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.05))
    log = MetricsLog(tmp_path / "metrics.jsonl")
    meta_train(editor, model, tok, splits["train"], splits["validation"], config, tmp_path, log=log)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["progress"]["step"] == 4
    longer = MetaTrainConfig(steps=6, grad_accum=1, val_every=2, val_edits=2, patience=10)
    fresh = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.05))
    log = MetricsLog(tmp_path / "metrics.jsonl", resume=True)
    summary = meta_train(
        fresh, model, tok, splits["train"], splits["validation"], longer, tmp_path, resume=True, log=log
    )
    assert summary["steps"] == 6
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(x).get("phase") == "validation"]  # fmt: skip
    assert steps == [2, 4, 6]


def test_non_finite_steps_are_skipped(setup, tmp_path):
    model, tok, splits = setup
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.05))
    with torch.no_grad():
        editor.alpha[0] = float("nan")
    net_before = {k: v.clone() for k, v in editor.state_dict().items() if "norm" not in k}
    config = MetaTrainConfig(steps=3, grad_accum=1, val_every=100, val_edits=0, patience=10)
    summary = meta_train(editor, model, tok, splits["train"], [], config, tmp_path)
    assert summary["skipped_steps"] == 3
    after = {k: v for k, v in editor.state_dict().items() if "norm" not in k}
    for k, v in net_before.items():
        assert torch.equal(v, after[k]) or (torch.isnan(v).any() and k == "alpha"), k


def test_training_on_top_of_prior_edits_leaves_model_unchanged(setup, tmp_path):
    """Sequential-editing practice: each step first edits the model in place with earlier
    training records, then restores it bitwise."""
    model, tok, splits = setup
    before = param_state(model)
    config = MetaTrainConfig(
        steps=3, grad_accum=2, max_prior_edits=3, val_every=3, val_edits=3, val_sequential=3
    )
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.05))
    summary = meta_train(editor, model, tok, splits["train"], splits["validation"], config, tmp_path)
    assert summary["steps"] == 3 and "es_sequential" in summary["best_validation"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_cosine_decay_lowers_every_groups_rate_and_survives_resume(setup, tmp_path):
    """With ``cosine_decay`` each parameter group's rate follows 0.1 + 0.45 (1 + cos(pi t / T)) of its
    own base rate; a resumed run recomputes it from the configuration, not from the saved state."""
    model, tok, splits = setup
    config = MetaTrainConfig(steps=4, grad_accum=1, val_every=2, val_edits=2, patience=10, cosine_decay=True,
                             lr=1e-3, lr_gate=2e-3, lr_alpha=4e-3)  # fmt: skip
    editor = MendEditor.for_model(model, MendConfig(rank=8, alpha_init=0.05))
    meta_train(editor, model, tok, splits["train"][:6], splits["validation"], config, tmp_path)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    factor = 0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 4))  # the rate of the last step (t = 3)
    rates = [g["lr"] for g in state["optimizer"]["param_groups"]]
    assert rates == pytest.approx([1e-3 * factor, 2e-3 * factor, 4e-3 * factor])
    assert factor < 0.25  # well below the base rates
    longer = MetaTrainConfig(**{**config.__dict__, "steps": 6})
    meta_train(editor, model, tok, splits["train"][:6], splits["validation"], longer, tmp_path, resume=True)
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    factor = 0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 6))
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx(
        [1e-3 * factor, 2e-3 * factor, 4e-3 * factor]
    )


def test_validate_editor_restores_the_editors_mode_when_it_raises(setup):
    model, tok, splits = setup
    editor = MendEditor.for_model(model, MendConfig(rank=8)).train()
    bad = dataclasses.replace(splits["validation"][0], target="   ")  # the collator refuses an empty target
    with pytest.raises(ValueError, match="empty target"):
        validate_editor(editor, model, tok, [bad])
    assert all(m.training for m in editor.modules())


def test_selection_never_keeps_an_editor_below_the_edit_success_floor(setup, tmp_path, monkeypatch):
    """A checkpoint that misses its own edit prompts loses to one that hits them, however low its
    drawdown (the drawdown term alone once picked a step with validation edit success 0.075)."""
    import editor_nets.train as train_module

    model, tok, splits = setup
    timid = {"es_edit": 0.5, "es_rephrase": 0.9, "dd_locality": 0.0}  # score 1.15, below the floor
    bold = {"es_edit": 0.95, "es_rephrase": 0.9, "dd_locality": 0.1}  # score 0.875
    bolder = {"es_edit": 1.0, "es_rephrase": 0.9, "dd_locality": 0.2}  # above the floor, score 0.4
    assert train_module._score(timid) > train_module._score(bold) > train_module._score(bolder)
    seen = iter([timid, bold, bolder])
    monkeypatch.setattr(train_module, "validate_editor", lambda *a, **k: dict(next(seen)))
    config = MetaTrainConfig(steps=3, grad_accum=1, val_every=1, val_edits=2, patience=10, val_sequential=0)
    editor = MendEditor.for_model(model, MendConfig(rank=8))
    summary = meta_train(editor, model, tok, splits["train"], splits["validation"], config, tmp_path)
    assert summary["best_validation"] == bold
    # and a checkpoint below the floor is kept only while nothing better has been seen
    seen = iter([{"es_edit": 0.3, "es_rephrase": 1.0, "dd_locality": 0.0}, timid])
    summary = meta_train(editor, model, tok, splits["train"], splits["validation"],
                         dataclasses.replace(config, steps=2), tmp_path / "again")  # fmt: skip
    assert summary["best_validation"] == timid


def test_sequential_validation_measures_drawdown_and_selection_weighs_it():
    """With ``n_sequential``, validation also reports the drawdown after each run of edits in a
    row (locality prompts in scope of another edit of the run left out); the model is restored
    after each run, and checkpoint selection scores that drawdown as it scores the single-edit one."""
    from world_models import world_gpt2

    import editor_nets.train as train_module

    model, tok, world = world_gpt2(0)
    before = param_state(model)
    records = [r for r in world.records if r.locality][:4]
    editor = MendEditor.for_model(model, MendConfig(rank=8))
    weight = model.get_submodule("transformer.h.2.mlp.c_proj").weight

    def noisy_edit(model, tokenizer, edit_records):  # every edit adds large noise to one weight
        snapshot = {"transformer.h.2.mlp.c_proj.weight": weight.detach().clone()}
        with torch.no_grad():
            weight.add_(torch.randn_like(weight) * 3.0)
        return snapshot

    torch.manual_seed(0)
    editor.edit = noisy_edit
    val = validate_editor(editor, model, tok, records, n_sequential=2)
    assert val["dd_sequential"] > 0.2
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    editor.edit = lambda model, tokenizer, edit_records: {}  # edits that change nothing
    assert validate_editor(editor, model, tok, records, n_sequential=2)["dd_sequential"] == 0.0

    # a run whose every locality prompt is in scope of another of its edits has nothing to count
    first, second = records[:2]
    covered = [
        dataclasses.replace(first, locality=[dataclasses.replace(first.locality[0], prompt=second.prompt)]),
        dataclasses.replace(second, locality=[dataclasses.replace(second.locality[0], prompt=first.prompt)]),
    ]
    editor.edit = noisy_edit
    assert "dd_sequential" not in validate_editor(editor, model, tok, covered, n_sequential=2)

    steady = {
        "es_edit": 1.0,
        "es_rephrase": 0.9,
        "dd_locality": 0.0,
        "es_sequential": 1.0,
        "dd_sequential": 0.0,
    }
    leaky = dict(steady, dd_sequential=0.05)
    assert train_module._score(steady) - train_module._score(leaky) == pytest.approx(0.25)
