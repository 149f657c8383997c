"""Baseline editors evaluated beside MEND: fine-tuning (FT) and fine-tuning with a KL locality term (FT+KL).

Public API::

    FTEditor(targets=None, lr=1e-3, max_steps=40, optimizer="adam", name="FT", until=None)
        .edit(model, tokenizer, records) -> WeightSnapshot       # the contract's Editor protocol
        .last: FTResult | None                                    # steps, success, loss, time of the last edit
    FTKLEditor(targets=None, lr=1e-3, max_steps=40, optimizer="adam", name="FT+KL",
               locality=None, kl_weight=1.0, n_locality=8, seed=0)
        .edit(model, tokenizer, records) -> WeightSnapshot
    FTResult(steps: int, success: bool, loss: float, step_seconds: float)
    locality_examples_from(records) -> list[LocalityExample]     # out-of-scope pairs of training records
    EDITORS: dict[str, Callable[..., Editor]]                    # "FT", "FT+KL", "MEND" -> factory
    build_editor(name, **kwargs) -> Editor    # e.g. build_editor("MEND", path="runs/default/editor", model=m)

Both fine-tune only the weights of the edited layers (the same layers MEND edits,
``editor_nets.families.default_targets(model)`` unless ``targets`` is given) on the edit
examples, all records of one call together (a batched edit), for at most ``max_steps``
optimiser steps, stopping as soon as every edit target is hit (teacher-forced argmax, the
evaluation's definition). ``edit`` changes the model in place and returns the originals of the
weights it changed; a non-finite loss or weight restores them and raises.

Further editors (ENN, KnowledgeEditor, SERAC, ROME-style) are more entries of :data:`EDITORS`:
a factory returning an object with ``name`` and ``edit(model, tokenizer, records) ->
WeightSnapshot``; an editor that cannot stack edits sets ``supports_sequential = False``.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from editor_nets.delta import WeightSnapshot
from editor_nets.evaluate import make_batch, model_logits, target_hits
from editor_nets.families import model_kind

__all__ = [
    "EDITORS",
    "FTEditor",
    "FTKLEditor",
    "FTResult",
    "build_editor",
    "locality_examples_from",
]


@dataclass
class FTResult:
    """What one fine-tuning edit did: optimiser steps taken, whether every target was hit, last loss,
    and the seconds spent in forward, backward and optimiser steps (``until`` checks excluded)."""

    steps: int
    success: bool
    loss: float
    step_seconds: float = 0.0


def _edited_weights(model: nn.Module, targets: Sequence[str] | None) -> dict[str, nn.Parameter]:
    """``{parameter name: weight}`` of the edited layers (biases are not edited, as in MEND)."""
    from graddecomp import resolve_targets

    if targets is None:
        from editor_nets.families import default_targets

        targets = default_targets(model)
    modules = resolve_targets(model, list(targets))
    if not modules:
        raise ValueError("no layers to fine-tune: the targets resolve to nothing")
    return {f"{name}.weight": module.weight for name, module in modules.items()}


@dataclass
class FTEditor:
    """Fine-tune the edited layers' weights on the edit examples (the FT baseline).

    ``lr`` is the optimiser's learning rate, ``max_steps`` bounds the optimiser steps per edit,
    ``optimizer`` is ``"adam"`` (fresh state per edit) or ``"sgd"``. The loss is the mean NLL of
    the target tokens given the edit prompts. ``until`` (optional, called with gradients off after
    every step) replaces the stopping rule: fine-tuning goes on past edit success until it returns
    True, e.g. until rephrasings are answered too (the latency benchmark's use).
    """

    targets: Sequence[str] | None = None
    lr: float = 1e-3
    max_steps: int = 40
    optimizer: str = "adam"
    name: str = "FT"
    until: Callable[[], bool] | None = field(default=None, repr=False)
    last: FTResult | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def extra_loss(self, model: nn.Module, kind: str) -> Tensor | None:
        """A term added to the edit loss at each step (FT+KL's locality KL); none for FT."""
        return None

    def prepare(self, model: nn.Module, tokenizer: Any, records: Sequence[Any], kind: str) -> None:
        """Called once per edit before any weight changes (FT+KL records its reference here)."""

    def release(self) -> None:
        """Called once per edit after the last step (FT+KL drops its reference here)."""

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        """Fine-tune in place on ``records`` (one batched update); return the original weights."""
        records = list(records)
        if not records:
            raise ValueError(f"{self.name}: edit needs at least one record")
        kind = model_kind(model)
        weights = _edited_weights(model, self.targets)
        snapshot = {n: w.detach().clone() for n, w in weights.items()}
        batch = make_batch(
            model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind
        )

        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        was_training = model.training
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(weights.values())
        for p in params:
            p.requires_grad_(True)
        opt_cls = torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD
        opt = opt_cls(params, lr=self.lr)
        steps, success, loss_value, seconds, done = 0, False, float("nan"), 0.0, False
        try:
            self.prepare(model, tokenizer, records, kind)
            if self.until is not None:
                with torch.no_grad():
                    done = bool(self.until())
            while True:
                start = time.perf_counter()
                logits = model_logits(model, batch, kind)
                correct, n_tokens, nll = target_hits(kind, logits, batch["labels"])
                success = bool(((correct == n_tokens) & (n_tokens > 0)).all())
                loss = nll.sum() / n_tokens.sum().clamp(min=1)
                if (success if self.until is None else done) or steps >= self.max_steps:
                    loss_value = float(loss.detach())
                    break
                extra = self.extra_loss(model, kind)
                if extra is not None:
                    loss = loss + extra
                if not torch.isfinite(loss.detach()):
                    raise FloatingPointError(
                        f"{self.name}: non-finite loss {loss.detach().item()} at step {steps}"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                seconds += time.perf_counter() - start
                if self.until is not None:
                    with torch.no_grad():
                        done = bool(self.until())
            if not all(torch.isfinite(p.detach()).all() for p in params):
                raise FloatingPointError(f"{self.name}: non-finite weights after {steps} steps")
        except BaseException:
            with torch.no_grad():
                for n, w in weights.items():
                    w.copy_(snapshot[n])
            raise
        finally:
            self.release()
            for p in params:
                p.grad = None
            for n, p in model.named_parameters():
                p.requires_grad_(flags[n])
            model.train(was_training)
        self.last = FTResult(steps=steps, success=success, loss=loss_value, step_seconds=seconds)
        return snapshot


def locality_examples_from(records: Sequence[Any]) -> list[Any]:
    """The locality examples of ``records`` (e.g. the training split), for :class:`FTKLEditor`."""
    return [ex for r in records for ex in [*r.locality, *r.hard_locality]]


@dataclass
class FTKLEditor(FTEditor):
    """FT plus ``kl_weight * KL(pre-edit || post-edit)`` on locality examples (the FT+KL baseline).

    ``locality``: out-of-scope examples with ``prompt`` and ``answer`` (``LocalityExample``),
    ideally from the training split (:func:`locality_examples_from`) so the evaluation's own
    locality prompts stay unseen. When it is ``None`` the locality examples of the records being
    edited are used, with a warning (the drawdown is then measured on prompts FT+KL trained on).
    Each edit draws ``n_locality`` of them (seeded). The KL covers every real position of the
    causal LM's prompt+answer, the decoder positions of a seq2seq model, the class distribution
    of a classifier.
    """

    name: str = "FT+KL"
    locality: Sequence[Any] | None = None
    kl_weight: float = 1.0
    n_locality: int = 8
    seed: int = 0
    _ref: tuple[dict[str, Tensor], Tensor, Tensor] | None = field(default=None, init=False, repr=False)
    _rng: random.Random = field(default_factory=random.Random, init=False, repr=False)
    _warned: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        self._rng.seed(self.seed)

    def prepare(self, model: nn.Module, tokenizer: Any, records: Sequence[Any], kind: str) -> None:
        pool = list(self.locality) if self.locality is not None else locality_examples_from(records)
        if self.locality is None and not self._warned:
            warnings.warn(
                "FTKLEditor has no locality examples of its own and uses those of the edited records; "
                "pass locality=locality_examples_from(train_records) for a fair drawdown",
                stacklevel=3,
            )
            self._warned = True
        if not pool:
            self._ref = None
            return
        chosen = self._rng.sample(pool, min(self.n_locality, len(pool)))
        batch = make_batch(
            model, tokenizer, [ex.prompt for ex in chosen], [ex.answer for ex in chosen], kind=kind
        )
        with torch.no_grad():
            logits = model_logits(model, batch, kind)
        if kind == "causal":
            mask = batch["attention_mask"].bool()
        elif kind == "seq2seq":
            mask = batch["labels"] != -100
        else:
            mask = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        self._ref = (batch, torch.log_softmax(logits.float(), dim=-1), mask)

    def release(self) -> None:
        self._ref = None

    def extra_loss(self, model: nn.Module, kind: str) -> Tensor | None:
        if self._ref is None or self.kl_weight == 0:
            return None
        batch, ref_logp, mask = self._ref
        logp = torch.log_softmax(model_logits(model, batch, kind).float(), dim=-1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # [B, T] or [B]
        return self.kl_weight * kl[mask].mean()


def _mend_from_pretrained(path: str, model: nn.Module | None = None) -> Any:
    from editor_nets.mend import MendEditor

    return MendEditor.from_pretrained(path, model=model)


EDITORS: dict[str, Callable[..., Any]] = {
    "FT": FTEditor,
    "FT+KL": FTKLEditor,
    "MEND": _mend_from_pretrained,
}


def build_editor(name: str, **kwargs: Any) -> Any:
    """Build the editor registered as ``name`` in :data:`EDITORS` with ``kwargs``."""
    if name not in EDITORS:
        raise KeyError(f"unknown editor {name!r}; known editors: {sorted(EDITORS)}")
    return EDITORS[name](**kwargs)
