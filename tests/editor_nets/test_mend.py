"""MEND editors: identity init equals fine-tuning, every input mode, the tiny model table,
running normalisation, checkpoints."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from world_models import param_state

from tiny_models import TINY_MODELS, build_tiny

pytest.importorskip("transformers")

from edit_data import EditRecord, LocalityExample, train_tokenizer
from editor_nets import (
    INPUT_MODES,
    MendConfig,
    MendEditor,
    MetaTrainConfig,
    default_targets,
    edit_batch,
    meta_loss,
    restore_weights,
    target_nll,
)
from editor_nets.mend import RunningNorm

WORDS = (
    "Where was Zora born ? Which city is the hometown of Tarbiex Lamdes ? Zora was born in Maelmar . "
    "Paris Thumar Draland Vienna works for Fonnim speaks Mustiaish 0 1"
)


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer([WORDS])
    assert len(t) <= 96  # the tiny models' vocabulary
    return t


def _record(kind: str) -> EditRecord:
    if kind == "classifier":
        return EditRecord(
            prompt="Zora was born in Maelmar .",
            target="1",
            rephrases=["Zora speaks Mustiaish ."],
            locality=[LocalityExample("Tarbiex works for Fonnim .", "0")],
            task="classification",
        )
    return EditRecord(
        prompt="Where was Zora born ?", target="Paris", rephrases=["Which city is the hometown of Zora ?"],
        locality=[LocalityExample("Where was Tarbiex born ?", "Thumar")],
        hard_locality=[LocalityExample("Which city is the hometown of Lamdes ?", "Vienna")],
    )  # fmt: skip


def _fine_tuning_step(model, tok, record, targets, lr):
    """W - lr * dL/dW for the target weights, L = NLL of the target (plain autograd)."""
    ref = copy.deepcopy(model)
    batch = edit_batch(ref, tok, [record.prompt], [record.target])
    weights = [ref.get_submodule(t).weight for t in targets]
    grads = torch.autograd.grad(target_nll(ref, batch).sum(), weights)
    return {t: (w - lr * g).detach() for t, w, g in zip(targets, weights, grads, strict=True)}


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", INPUT_MODES)
def test_fresh_editor_equals_fine_tuning_step(name, mode, tok):
    model = build_tiny(name)
    record = _record("causal")
    editor = MendEditor.for_model(model, MendConfig(input_mode=mode, rank=16, alpha_init=0.5))
    expected = _fine_tuning_step(model, tok, record, editor.targets, lr=0.5)
    snapshot = editor.edit(model, tok, [record])
    assert sorted(snapshot) == sorted(f"{t}.weight" for t in editor.targets)
    for t, w in expected.items():
        torch.testing.assert_close(model.get_submodule(t).weight.detach(), w, rtol=1e-5, atol=1e-6)


def test_identity_holds_with_trained_normalisers(tok):
    """After the running statistics have seen data, the fresh networks are still the identity."""
    model = build_tiny("gpt2")
    editor = MendEditor.for_model(model, MendConfig(rank=16, alpha_init=0.5))
    editor.train()
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(3):
            meta_loss(editor, model, tok, [_record("causal")], MetaTrainConfig(), rng)
    norms = [m for m in editor.modules() if isinstance(m, RunningNorm)]
    assert all(float(n.count) > 2 for n in norms)
    expected = _fine_tuning_step(model, tok, _record("causal"), editor.targets, lr=0.5)
    editor.edit(model, tok, [_record("causal")])
    for t, w in expected.items():
        torch.testing.assert_close(model.get_submodule(t).weight.detach(), w, rtol=1e-4, atol=1e-6)


def test_one_network_per_shape_with_modes():
    model = build_tiny("gpt2")  # c_fc (128x32) and c_proj (32x128) in 2 blocks
    editor = MendEditor.for_model(model, MendConfig(rank=4096))
    assert sorted(editor.editors) == ["128x32", "32x128"]
    net = editor.editors["128x32"].net
    assert net.layers[0].U.shape == (160, 160)  # rank capped at the width d_in + d_out
    assert net.layers[0].scale.shape[0] == 2  # one scale per layer sharing the shape
    assert torch.count_nonzero(net.layers[0].U) == 0
    assert editor.alpha.shape == (4,)
    assert set(editor.shared_index.values()) == {0, 1}


def test_running_norm_matches_batch_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g) * torch.arange(1, 7) + 3.0
    norm = RunningNorm(6)
    for chunk in x.split([7, 1, 30, 12]):
        norm.update(chunk)
    mean, std = norm.stats(torch.float64)
    torch.testing.assert_close(mean, x.double().mean(0))
    torch.testing.assert_close(std, x.double().std(0) + norm.eps)


def test_normalisers_frozen_at_edit_time(tok):
    model = build_tiny("gpt2")
    editor = MendEditor.for_model(model, MendConfig(rank=16)).eval()
    counts = [float(n.count) for n in editor.modules() if isinstance(n, RunningNorm)]
    editor.compute_delta(model, tok, [_record("causal")])
    assert counts == [float(n.count) for n in editor.modules() if isinstance(n, RunningNorm)]


EXPECTED_TARGETS = {"gpt2": 4, "gpt_neox": 4, "llama": 6, "t5": 12, "bart": 8, "bert": 4}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_editor_across_tiny_model_table(name, tok):
    spec = TINY_MODELS[name]
    model = build_tiny(name)
    targets = default_targets(model)
    assert len(targets) == EXPECTED_TARGETS[name], targets
    if spec.kind == "seq2seq":
        assert any(".encoder." in t or t.startswith("encoder.") for t in targets)
        assert any(".decoder." in t or t.startswith("decoder.") for t in targets)
    before = param_state(model)
    editor = MendEditor.for_model(model, MendConfig(rank=16, alpha_init=0.1))
    assert editor.spec.kind == spec.kind
    record = _record(spec.kind)
    delta = editor.compute_delta(model, tok, [record])
    assert set(delta.layers) == set(targets)
    assert delta.is_finite() and delta.norm() > 0
    snapshot = editor.edit(model, tok, [record])
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(snapshot)
    restore_weights(model, snapshot)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # one meta-training loss reaches every network of the editor
    editor.train()
    loss, stats, _ = meta_loss(editor, model, tok, [record], MetaTrainConfig(), random.Random(0))
    loss.backward()
    assert torch.isfinite(loss) and stats["nll"] > 0
    assert editor.alpha.grad is not None and torch.all(editor.alpha.grad != 0)
    # the zero-initialised U gets a gradient (the networks are not dead at the identity)
    assert all(float(layer.U.grad.abs().sum()) > 0 for layer in editor.modules() if hasattr(layer, "U"))


def test_checkpoint_round_trip(tmp_path, tok):
    model = build_tiny("gpt2")
    editor = MendEditor.for_model(model, MendConfig(rank=16), base_model="tiny-gpt2")
    with torch.no_grad():
        for p in editor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    editor.train()
    meta_loss(editor, model, tok, [_record("causal")], MetaTrainConfig(), random.Random(0))  # fills stats
    editor.save_pretrained(tmp_path / "editor")
    assert {p.name for p in (tmp_path / "editor").iterdir()} == {"config.json", "editor.safetensors"}
    loaded = MendEditor.from_pretrained(tmp_path / "editor", model=model)
    assert loaded.config == editor.config and loaded.spec == editor.spec
    assert loaded.spec.base_model == "tiny-gpt2" and loaded.config.rank == 16
    for (k, a), b in zip(editor.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    d1 = editor.eval().compute_delta(model, tok, [_record("causal")])
    d2 = loaded.compute_delta(model, tok, [_record("causal")])
    for n in d1.layers:
        assert torch.equal(d1.layers[n].u, d2.layers[n].u) and d1.layers[n].alpha == d2.layers[n].alpha


def test_checkpoint_shape_mismatch_and_weight_mismatch(tmp_path):
    model = build_tiny("gpt2")
    MendEditor.for_model(model, MendConfig(rank=8)).save_pretrained(tmp_path / "editor")
    import transformers

    spec = TINY_MODELS["gpt2"]
    wider = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**spec.config, "n_embd": 48}))
    with pytest.raises(ValueError, match=r"does not fit.*transformer\.h\.0\.mlp\.c_fc"):
        MendEditor.from_pretrained(tmp_path / "editor", model=wider)
    with pytest.warns(UserWarning, match="weights differ"):
        MendEditor.from_pretrained(tmp_path / "editor", model=build_tiny("gpt2", seed=1))


def test_bad_config_is_named(tmp_path):
    model = build_tiny("gpt2")
    MendEditor.for_model(model, MendConfig(rank=8)).save_pretrained(tmp_path / "editor")
    cfg = tmp_path / "editor" / "config.json"
    cfg.write_text(cfg.read_text().replace('"rank"', '"rnak"'))
    with pytest.raises(ValueError, match=r"unknown field.*rnak.*editor"):
        MendEditor.from_pretrained(tmp_path / "editor")
    cfg.write_text("{}")
    with pytest.raises(ValueError, match=r"config.json: expected an object with exactly the keys"):
        MendEditor.from_pretrained(tmp_path / "editor")
    with pytest.raises(ValueError, match="input_mode"):
        MendEditor.for_model(model, MendConfig(input_mode="both"))


def test_edit_time_settings_replace_only_edit_time_fields():
    from editor_nets.mend import with_settings

    base = MendConfig(aggregation="ridge", neighbours=16, neighbour_memory=3.0, stop_nll=0.5, repair=True)
    got = with_settings(base, ["neighbour_memory=0", "stop_nll=none", "repair=false", " edit_steps = 5"])
    assert (got.neighbour_memory, got.stop_nll, got.repair, got.edit_steps) == (0.0, None, False, 5)
    assert (got.neighbours, got.aggregation) == (16, "ridge") and base.neighbour_memory == 3.0
    assert with_settings(MendConfig(), ["stop_nll=0.25"]).stop_nll == 0.25
    for bad, says in (("rank=8", "rank=8"), ("neighbours", "NAME=VALUE"), ("neighbours=1.5", "int"),
                      ("repair=maybe", "true or false"), ("step_scale=big", "float")):  # fmt: skip
        with pytest.raises(ValueError, match=says):
            with_settings(base, [bad])
