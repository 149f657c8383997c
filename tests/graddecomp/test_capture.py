"""capture / weight_grad: exactness against autograd, no parameter grads, no leftover hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graddecomp import Factors, capture, layer_shape, resolve_targets, weight_grad
from tiny_models import TINY_MODELS


class MLP(nn.Module):
    """A plain torch model, so these tests also run where transformers is not installed."""

    def __init__(self, d: int = 6, hidden: int = 10, vocab: int = 20):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) for _ in range(3)
        )
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def _lm_loss(model: MLP, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits = model(ids)
    nll = nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none")
    return (nll * mask.flatten()).sum() / mask.sum()


def _ids_and_mask(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    return ids, mask


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_plain_model_matches_autograd_and_drops_padding():
    torch.manual_seed(0)
    model = MLP()
    ids, mask = _ids_and_mask()
    loss = _lm_loss(model, ids, mask)
    loss.backward()
    targets = ["blocks.*.0", "blocks.2.2"]
    with capture(model, targets, mask=mask) as cap:
        cap.backward(_lm_loss(model, ids, mask))
    assert set(cap.factors) == {"blocks.0.0", "blocks.1.0", "blocks.2.0", "blocks.2.2"}
    for name, f in cap.factors.items():
        module = cap.modules[name]
        assert f.u.shape == (int(mask.sum()), layer_shape(module)[1])
        assert f.delta.shape == (int(mask.sum()), layer_shape(module)[0])
        assert _rel_err(weight_grad(module, f), module.weight.grad) <= 1e-5


def test_zero_delta_rows_are_dropped_without_a_mask():
    torch.manual_seed(0)
    model = MLP()
    ids, mask = _ids_and_mask()
    with capture(model, "blocks.0.0") as cap:
        cap.backward(_lm_loss(model, ids, mask))
    # Padding tokens do not reach the loss (no attention across tokens here): their delta is 0.
    assert cap.factors["blocks.0.0"].u.shape[0] == int(mask.sum())


def test_no_parameter_grad_and_flags_restored():
    torch.manual_seed(0)
    model = MLP()
    model.head.weight.requires_grad_(False)  # a user's own frozen parameter stays frozen
    ids, mask = _ids_and_mask()
    with capture(model, "blocks.*.2") as cap:
        cap.backward(_lm_loss(model, ids, mask))
    assert all(p.grad is None for p in model.parameters())
    assert not model.head.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "head.weight")


def test_backward_stops_at_first_targeted_layer():
    torch.manual_seed(0)
    model = MLP()
    ids, mask = _ids_and_mask()
    seen: list[str] = []
    # A tensor hook on the embedding output would fire if autograd recorded it.
    handle = model.emb.register_forward_hook(
        lambda m, a, out: seen.append("recorded") if out.requires_grad else None
    )
    try:
        with capture(model, "blocks.1.0") as cap:
            loss = _lm_loss(model, ids, mask)
            cap.backward(loss)
    finally:
        handle.remove()
    assert seen == []  # the embedding output was never part of the graph
    assert cap.factors["blocks.1.0"].u.shape[0] > 0


def test_works_when_every_parameter_is_frozen():
    torch.manual_seed(0)
    model = MLP().requires_grad_(False)
    ids, mask = _ids_and_mask()
    with capture(model, "blocks.0.0", mask=mask) as cap:
        cap.backward(_lm_loss(model, ids, mask))
    ref = MLP()
    ref.load_state_dict(model.state_dict())
    _lm_loss(ref, ids, mask).backward()
    assert (
        _rel_err(weight_grad(model.blocks[0][0], cap.factors["blocks.0.0"]), ref.blocks[0][0].weight.grad)
        <= 1e-5
    )
    assert not any(p.requires_grad for p in model.parameters())


def _hook_counts(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def test_hooks_removed_and_no_attributes_left_also_on_exception():
    torch.manual_seed(0)
    model = MLP()
    before_attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    before_hooks = _hook_counts(model)
    ids, mask = _ids_and_mask()
    with pytest.raises(ZeroDivisionError), capture(model, "blocks.*.0"):
        _lm_loss(model, ids, mask)
        raise ZeroDivisionError
    assert _hook_counts(model) == before_hooks
    assert {n: set(vars(m)) for n, m in model.named_modules()} == before_attrs
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    with capture(model, "blocks.*.0") as cap:
        cap.backward(_lm_loss(model, ids, mask))
    assert _hook_counts(model) == before_hooks
    assert {n: set(vars(m)) for n, m in model.named_modules()} == before_attrs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gives_fp32_factors(dtype):
    torch.manual_seed(0)
    model = MLP().to(dtype)
    ids, mask = _ids_and_mask()
    with capture(model, "blocks.2.0", mask=mask) as cap:
        cap.backward(_lm_loss(model, ids, mask).float())
    f = cap.factors["blocks.2.0"]
    assert f.u.dtype == torch.float32 and f.delta.dtype == torch.float32
    ref = MLP().to(dtype)
    ref.load_state_dict(model.state_dict())
    _lm_loss(ref, ids, mask).float().backward()
    grad = weight_grad(ref.blocks[2][0], f)
    assert _rel_err(grad, ref.blocks[2][0].weight.grad.float()) < 0.05  # low-precision backward


def test_layer_called_twice_accumulates_rows():
    lin = nn.Linear(4, 3)
    x1, x2 = torch.randn(2, 4), torch.randn(5, 4)
    with capture(lin, [lin]) as cap:
        cap.backward(lin(x1).pow(2).sum() + lin(x2).sum())
    lin(x1).pow(2).sum().add(lin(x2).sum()).backward()
    f = cap.factors[""] if "" in cap.factors else next(iter(cap.factors.values()))
    assert f.u.shape == (7, 4)
    assert _rel_err(weight_grad(lin, f), lin.weight.grad) <= 1e-5


def test_clear_errors():
    model = MLP()
    with pytest.raises(KeyError, match=r"blocks\.9\.0"):
        resolve_targets(model, "blocks.9.0")
    with pytest.raises(KeyError, match="matches no module"):
        resolve_targets(model, "decoder.*")
    with pytest.raises(TypeError, match="GELU"):
        resolve_targets(model, "blocks.0.1")
    with pytest.raises(TypeError, match="Embedding"):
        layer_shape(model.emb)
    with pytest.raises(ValueError, match="do not fit"):
        weight_grad(model.blocks[0][0], Factors(torch.zeros(1, 3), torch.zeros(1, 10)))
    ids, _ = _ids_and_mask()
    with (
        pytest.raises(RuntimeError, match="gradients disabled"),
        capture(model, "blocks.0.0"),
        torch.no_grad(),
    ):
        model(ids)
    with pytest.raises(RuntimeError, match="no targeted layer ran"), capture(model, "blocks.0.0") as cap:
        cap.backward(torch.zeros((), requires_grad=True))


# ---------------------------------------------------------------- the tiny model table


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_models_weight_grad_equals_autograd(name):
    pytest.importorskip("transformers")
    from tiny_models import build_tiny, tiny_batch

    spec = TINY_MODELS[name]
    model = build_tiny(name)
    batch = tiny_batch(name)
    model(**batch).loss.backward()
    globs = list(spec.mlp + spec.attn)
    with capture(model, globs) as cap:
        cap.backward(model(**batch).loss)
    assert len(cap.factors) == len(resolve_targets(model, globs)) >= 4
    for layer, f in cap.factors.items():
        module = cap.modules[layer]
        assert f.u.shape[0] == f.delta.shape[0] > 0
        assert f.u.shape[0] <= batch["input_ids"].numel() or spec.kind == "seq2seq"
        assert _rel_err(weight_grad(module, f), module.weight.grad) <= 1e-5, layer
    assert all(p.grad is None or p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_models_no_grad_allocated_and_padding_dropped(name):
    pytest.importorskip("transformers")
    from tiny_models import build_tiny, tiny_batch

    spec = TINY_MODELS[name]
    model = build_tiny(name)
    batch = tiny_batch(name)
    first_mlp = spec.mlp[0]
    mask = (
        batch["attention_mask"]
        if spec.kind != "seq2seq" or first_mlp.startswith(("encoder", "model.encoder"))
        else None
    )
    with capture(model, first_mlp, mask=mask) as cap:
        cap.backward(model(**batch).loss)
    assert all(p.grad is None for p in model.parameters())
    n_real = int(batch["attention_mask"].sum())
    for f in cap.factors.values():
        assert 0 < f.u.shape[0] <= n_real
