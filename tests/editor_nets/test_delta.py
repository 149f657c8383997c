"""EditDelta: exact apply/restore, safetensors round trip, the in-forward low-rank update."""

from __future__ import annotations

import pytest
import torch
from world_models import param_state

from tiny_models import build_tiny, tiny_batch

pytest.importorskip("transformers")

from editor_nets import EditDelta, LayerDelta, applied, apply_delta, lowrank_edit, restore_weights
from graddecomp import layer_shape

LAYERS = {
    "gpt2": ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_proj"],  # Conv1D
    "llama": ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.down_proj"],  # nn.Linear
}


def _random_delta(model, names, rank=3, seed=0, alpha=0.5) -> EditDelta:
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name in names:
        d_out, d_in = layer_shape(model.get_submodule(name))
        layers[name] = LayerDelta(
            torch.randn(rank, d_in, generator=g), torch.randn(rank, d_out, generator=g), alpha
        )
    return EditDelta(layers, {"editor": "test", "prompt": "Where was Zora born?"})


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_apply_then_restore_is_bitwise(name):
    model = build_tiny(name)
    before = param_state(model)
    delta = _random_delta(model, LAYERS[name])
    snapshot = apply_delta(model, delta)
    assert sorted(snapshot) == sorted(f"{n}.weight" for n in LAYERS[name])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert sorted(changed) == sorted(snapshot)
    # a second edit on top, then restoring both snapshots in reverse order
    snapshot2 = apply_delta(model, _random_delta(model, LAYERS[name], seed=1))
    restore_weights(model, snapshot2)
    restore_weights(model, snapshot)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_apply_subtracts_alpha_times_pseudo_gradient(name):
    model = build_tiny(name)
    delta = _random_delta(model, LAYERS[name], alpha=0.25)
    layer_name = LAYERS[name][0]
    module = model.get_submodule(layer_name)
    w0 = module.weight.detach().clone()
    apply_delta(model, delta)
    layer = delta.layers[layer_name]
    grad = layer.delta.T @ layer.u  # [d_out, d_in]
    if name == "gpt2":  # Conv1D stores [d_in, d_out]
        grad = grad.T
    torch.testing.assert_close(module.weight.detach(), w0 - 0.25 * grad)


def test_norm_matches_dense_update():
    model = build_tiny("gpt2")
    delta = _random_delta(model, LAYERS["gpt2"], alpha=0.3)
    dense = torch.cat([delta.dense(n, model.get_submodule(n)).flatten() for n in delta.layers])
    assert delta.norm() == pytest.approx(float(dense.norm()), rel=1e-5)


def test_save_load_round_trip(tmp_path):
    model = build_tiny("llama")
    delta = _random_delta(model, LAYERS["llama"], alpha=0.125)
    path = tmp_path / "edit.safetensors"
    delta.save(path)
    loaded = EditDelta.load(path)
    assert loaded.provenance == delta.provenance
    assert list(loaded.layers) == list(delta.layers)
    for n, layer in delta.layers.items():
        assert torch.equal(loaded.layers[n].u, layer.u)
        assert torch.equal(loaded.layers[n].delta, layer.delta)
        assert loaded.layers[n].alpha == layer.alpha
    # the loaded edit changes the model exactly like the original
    a, b = build_tiny("llama"), build_tiny("llama")
    apply_delta(a, delta)
    apply_delta(b, loaded)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_from_tensors_names_missing_part():
    with pytest.raises(ValueError, match="lacks"):
        EditDelta.from_tensors({"layer.u": torch.zeros(1, 2), "layer.alpha": torch.tensor(1.0)})


def test_bad_edits_change_nothing():
    model = build_tiny("gpt2")
    before = param_state(model)
    bad = _random_delta(model, LAYERS["gpt2"])
    bad.layers[LAYERS["gpt2"][1]].u[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        apply_delta(model, bad)
    wrong = _random_delta(model, LAYERS["gpt2"])
    wrong.layers[LAYERS["gpt2"][1]] = LayerDelta(torch.zeros(2, 5), torch.zeros(2, 7), 1.0)
    with pytest.raises(ValueError, match="do not fit"):
        apply_delta(model, wrong)
    with pytest.raises(ValueError, match="exceeds the bound"):
        apply_delta(model, _random_delta(model, LAYERS["gpt2"]), max_norm=1e-3)
    with pytest.raises(KeyError, match="does not have"):
        apply_delta(model, EditDelta({"transformer.h.9.mlp.c_fc": bad.layers[LAYERS["gpt2"][0]]}))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_lowrank_forward_equals_dense_update(name):
    model = build_tiny(name).double()
    batch = tiny_batch(name)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    delta = _random_delta(model, LAYERS[name], alpha=0.05)
    delta = EditDelta(
        {n: LayerDelta(x.u.double(), x.delta.double(), x.alpha) for n, x in delta.layers.items()}
    )
    base = model(**inputs).logits
    with lowrank_edit(model, delta):
        functional = model(**inputs).logits
    # hooks are gone after the block
    torch.testing.assert_close(model(**inputs).logits, base, rtol=0, atol=0)
    assert not any(m._forward_hooks for m in model.modules())
    snapshot = apply_delta(model, delta)
    dense = model(**inputs).logits
    restore_weights(model, snapshot)
    assert not torch.allclose(functional, base)
    torch.testing.assert_close(functional, dense, rtol=1e-9, atol=1e-9)


def test_lowrank_gradients_reach_factors_and_alpha():
    model = build_tiny("gpt2")
    for p in model.parameters():
        p.requires_grad_(False)
    batch = tiny_batch("gpt2")
    name = LAYERS["gpt2"][0]
    d_out, d_in = layer_shape(model.get_submodule(name))
    u = torch.randn(2, d_in, requires_grad=True)
    d = torch.randn(2, d_out, requires_grad=True)
    alpha = torch.tensor(0.1, requires_grad=True)
    with lowrank_edit(model, EditDelta({name: LayerDelta(u, d, alpha)})):
        loss = model(**batch).loss
    loss.backward()
    assert u.grad is not None and d.grad is not None and alpha.grad is not None
    assert float(u.grad.abs().sum()) > 0 and float(alpha.grad.abs()) > 0


def test_lowrank_hooks_removed_on_error():
    model = build_tiny("gpt2")
    with pytest.raises(RuntimeError, match="boom"), lowrank_edit(model, _random_delta(model, LAYERS["gpt2"])):
        raise RuntimeError("boom")
    assert not any(m._forward_hooks for m in model.modules())


def test_applied_stacks_edits_and_restores_bitwise_also_on_error():
    model = build_tiny("gpt2")
    before = param_state(model)
    first, second = _random_delta(model, LAYERS["gpt2"]), _random_delta(model, LAYERS["gpt2"][:1], seed=1)
    expected = build_tiny("gpt2")
    apply_delta(expected, first)
    apply_delta(expected, second)
    with applied(model, first, second):
        for k, v in expected.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), k
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), applied(model, first):
        raise RuntimeError("boom")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
