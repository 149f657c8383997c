"""Editable neural networks (ENN, Sinitsin et al., ICLR 2020): the base model itself is trained so
that a few plain gradient steps on an edit's loss make the edit and change little else.

An edit is ``inner_steps`` steps of gradient descent on the edit's mean target NLL, over the
edited matrices only, each with its own learned step size ``exp(log_lr)``. :func:`enn_train`
trains every parameter of the model (and the step sizes) through that inner loop, written with
``torch.func.functional_call`` (the edited weights are a dict of tensors, never written into the
model while training): per training edit the loss is

    c_base * NLL(original answers | theta)                       the model keeps what it knows
  + c_edit * NLL(new target | prompt and rephrasings, theta')    theta' = the edited weights
  + c_loc  * KL(f_theta || f_theta') on the edit's locality prompts

The model is changed in place by training (that is the method); :class:`EnnEditor` then edits it
like fine-tuning, with the learned step sizes.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from editor_nets.models import default_targets, model_kind
from editor_nets.scoring import answer_logits, edit_batch, kl_divergence, score_batch, target_nll
from editor_nets.state import WeightSnapshot, eval_mode, trainable

__all__ = ["EnnConfig", "EnnEditor", "edited_weights", "enn_train"]


@dataclass
class EnnConfig:
    """ENN training: ``steps`` Adam steps (``lr``) of ``batch_size`` training edits each."""

    steps: int = 200
    lr: float = 1e-4
    lr_step_size: float = 1e-2  # the learning rate of the log step sizes
    inner_steps: int = 1
    step_size_init: float = 1e-2
    c_base: float = 1.0
    c_edit: float = 1.0
    c_loc: float = 1.0
    batch_size: int = 4
    seed: int = 0


class _Bound:
    """``model`` called with some of its weights replaced by ``weights`` (name -> tensor)."""

    def __init__(self, model: nn.Module, weights: Mapping[str, Tensor]) -> None:
        self.model, self.weights = model, weights

    def __call__(self, **inputs: Tensor) -> Any:
        return torch.func.functional_call(self.model, dict(self.weights), args=(), kwargs=inputs)


def edited_weights(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    log_step_sizes: Mapping[str, Tensor],
    steps: int,
    *,
    create_graph: bool,
) -> dict[str, Tensor]:
    """``weights`` (name -> ``[d_out, d_in]``-like tensor) after ``steps`` gradient steps on the mean
    target NLL of the ``edit_batch`` ``batch``; differentiable in ``weights`` and the step sizes
    with ``create_graph``."""
    kind = model_kind(model)
    current = dict(weights)
    for _ in range(steps):
        loss = target_nll(_Bound(model, current), batch, kind=kind).mean()  # type: ignore[arg-type]
        grads = torch.autograd.grad(loss, list(current.values()), create_graph=create_graph)
        current = {
            n: w - log_step_sizes[n].exp() * g for (n, w), g in zip(current.items(), grads, strict=True)
        }
    return current


@dataclass
class EnnEditor:
    """Edits an ENN-trained model: gradient steps on the edit's target NLL over the weights
    ``log_step_sizes`` names (``"<layer>.weight"``), each with its learned step size, in rounds of
    ``steps`` (as trained) until the targets are hit, ``max_steps`` rounds at most (the paper's
    "steps until the edit holds")."""

    log_step_sizes: dict[str, Tensor] = field(default_factory=dict)
    steps: int = 1
    max_steps: int = 10
    name: str = "ENN"

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        if not self.log_step_sizes:
            raise ValueError("ENN edits a model trained by enn_train; this editor has no step sizes")
        batch = edit_batch(model, tokenizer, [r.prompt for r in records], [r.target for r in records])
        new = {n: model.get_parameter(n).detach() for n in self.log_step_sizes}
        with torch.enable_grad():  # steps of ``steps`` inner steps until the targets are hit
            for _ in range(self.max_steps):
                with torch.no_grad():
                    if bool(score_batch(_Bound(model, new), batch, kind=model_kind(model)).exact.all()):  # type: ignore[arg-type]
                        break
                weights = {n: w.detach().requires_grad_(True) for n, w in new.items()}
                new = edited_weights(
                    model, batch, weights, self.log_step_sizes, self.steps, create_graph=False
                )
                new = {n: w.detach() for n, w in new.items()}
        if not all(bool(torch.isfinite(w).all()) for w in new.values()):
            raise ValueError("ENN edit has non-finite weights; nothing was changed")
        snapshot = {}
        with torch.no_grad():
            for n, w in new.items():
                p = model.get_parameter(n)
                snapshot[n] = p.detach().clone()
                p.copy_(w)
        return snapshot


def _edit_losses(
    model: nn.Module, tokenizer: Any, record: Any, log_lr: dict[str, Tensor], config: EnnConfig
) -> dict[str, Tensor]:
    kind = model_kind(model)
    prompts = [record.prompt, *record.rephrases]
    base = target_nll(
        model, edit_batch(model, tokenizer, prompts, [record.original] * len(prompts)), kind=kind
    )
    weights = {n: model.get_parameter(n) for n in log_lr}
    edit = edit_batch(model, tokenizer, [record.prompt], [record.target], kind=kind)
    new = edited_weights(model, edit, weights, log_lr, config.inner_steps, create_graph=True)
    edited = _Bound(model, new)
    in_scope = edit_batch(model, tokenizer, prompts, [record.target] * len(prompts), kind=kind)
    losses = {"base": base.mean(), "edit": target_nll(edited, in_scope, kind=kind).mean()}  # type: ignore[arg-type]
    if record.locality:
        loc = edit_batch(
            model,
            tokenizer,
            [x.prompt for x in record.locality],
            [x.answer for x in record.locality],
            kind=kind,
        )
        ref = answer_logits(model, loc, kind=kind).logits.detach()
        post = answer_logits(edited, loc, kind=kind).logits  # type: ignore[arg-type]
        losses["loc"] = kl_divergence(ref, post).mean()
    return losses


def enn_train(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    config: EnnConfig | None = None,
    *,
    targets: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[EnnEditor, list[dict[str, float]]]:
    """Train ``model`` in place to be editable on ``records`` (training edits with rephrasings and
    locality prompts); ``targets`` are the edited layers (default ``default_targets``). Returns the
    editor (its learned step sizes) and one log entry per step."""
    config = config or EnnConfig()
    if not records:
        raise ValueError("enn_train needs training records")
    names = [f"{t}.weight" for t in (targets or default_targets(model))]
    log_lr = {
        n: torch.tensor(float(torch.tensor(config.step_size_init).log()), requires_grad=True) for n in names
    }
    opt = torch.optim.Adam(
        [{"params": list(model.parameters()), "lr": config.lr},
         {"params": list(log_lr.values()), "lr": config.lr_step_size}]
    )  # fmt: skip
    rng = random.Random(config.seed)
    log: list[dict[str, float]] = []
    weights = {"base": config.c_base, "edit": config.c_edit, "loc": config.c_loc}
    # no dropout (the inner step must see the function it edits); SDPA's math kernel, the one whose
    # backward is itself differentiable (the meta-gradient differentiates the inner step's gradient)
    with trainable(model), eval_mode(model), sdpa_kernel(SDPBackend.MATH):
        for step in tqdm(range(config.steps), desc="ENN training", unit="step", disable=not progress):
            opt.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for record in rng.sample(list(records), min(config.batch_size, len(records))):
                losses = _edit_losses(model, tokenizer, record, log_lr, config)
                total = sum(weights[k] * v for k, v in losses.items()) / config.batch_size
                total.backward()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / config.batch_size
            opt.step()
            log.append({"step": step, **sums})
    editor = EnnEditor({n: v.detach() for n, v in log_lr.items()}, steps=config.inner_steps)
    return editor, log
