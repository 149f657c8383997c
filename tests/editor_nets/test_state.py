"""Save-and-restore context managers and the weights digest."""

from __future__ import annotations

import pytest
import torch

from tiny_models import build_tiny

pytest.importorskip("transformers")

from editor_nets import eval_mode, frozen, restoring, weights_digest


def test_restoring_keeps_the_earliest_original_of_each_parameter():
    model = build_tiny("gpt2")
    w = model.get_submodule("transformer.h.0.mlp.c_fc").weight
    original = w.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), restoring(model) as keep:
        for _ in range(2):  # two edits of the same weight: the first snapshot is the one restored
            keep({"transformer.h.0.mlp.c_fc.weight": w.detach().clone()})
            with torch.no_grad():
                w.add_(1.0)
        raise RuntimeError("boom")
    assert torch.equal(w, original)


def test_frozen_and_eval_mode_restore_what_each_parameter_and_module_had():
    model = build_tiny("gpt2").train()
    model.transformer.h[0].eval()  # mixed modes must come back as they were
    model.lm_head.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="boom"), frozen(model), eval_mode(model):
        assert not any(p.requires_grad for p in model.parameters())
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert modes == {n: m.training for n, m in model.named_modules()}
    with eval_mode(model, training=True):
        assert all(m.training for m in model.modules())
    assert modes == {n: m.training for n, m in model.named_modules()}


def test_weights_digest_sees_every_bit_and_can_be_restricted_to_names():
    a, b = build_tiny("gpt2"), build_tiny("gpt2")
    assert weights_digest(a) == weights_digest(b)
    names = ["transformer.h.1.mlp.c_proj.weight"]
    with torch.no_grad():
        w = b.get_parameter("transformer.h.0.mlp.c_fc.weight")
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    assert weights_digest(a) != weights_digest(b)
    assert weights_digest(a, names) == weights_digest(b, names)
    assert weights_digest(a.to(torch.bfloat16)) != weights_digest(build_tiny("gpt2"))  # dtype counts
