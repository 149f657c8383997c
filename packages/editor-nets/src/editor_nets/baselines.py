"""Baseline editors evaluated beside MEND: fine-tuning (FT) and fine-tuning with a KL locality term
(FT+KL), and the registry of every editor the commands can name.

Public API::

    FTEditor(targets=None, lr=1e-3, max_steps=40, optimizer="adam", name="FT", until=None)
        .edit(model, tokenizer, records) -> WeightSnapshot       # the Editor protocol
        .last: FTResult | None                                    # steps, success, loss, time of the last edit
    FTKLEditor(..., locality=None, kl_weight=1.0, n_locality=8, seed=0)
    locality_examples_from(records) -> list[LocalityExample]     # out-of-scope pairs of training records
    EDITORS: dict[str, Callable[[EditorSetup], Editor]]          # "MEND", "FT", "FT+KL" -> factory
    build_editors(names, setup) -> dict[str, Editor]

Both fine-tune only the weights of the edited layers (the same layers MEND edits,
``editor_nets.models.default_targets(model)`` unless ``targets`` is given) on the edit examples,
all records of one call together (a batched edit), for at most ``max_steps`` optimiser steps,
stopping as soon as every edit target is hit (the evaluation's definition). ``edit`` changes the
model in place and returns the originals of the weights it changed; a non-finite loss or weight
restores them and raises.

Further editors are more entries of :data:`EDITORS`: a factory from an :class:`EditorSetup` to an
object with ``name`` and ``edit(model, tokenizer, records) -> WeightSnapshot``; an editor that
cannot stack edits sets ``supports_sequential = False``.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from editor_nets.delta import Editor
from editor_nets.models import default_targets, model_kind
from editor_nets.scoring import edit_batch, kl_divergence, model_logits, score_batch
from editor_nets.state import WeightSnapshot, eval_mode, frozen, restore_weights
from graddecomp import resolve_targets

__all__ = [
    "EDITORS",
    "EditorSetup",
    "FTEditor",
    "FTKLEditor",
    "FTResult",
    "build_editors",
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
    modules = resolve_targets(model, list(targets) if targets is not None else default_targets(model))
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

    def locality_term(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], kind: str
    ) -> Callable[[], Tensor] | None:
        """Called once per edit before any weight changes; returns a term added to the loss at each
        step (FT+KL's locality KL), or ``None`` (FT)."""
        return None

    def _done(self) -> bool:
        with torch.no_grad():
            return bool(self.until())

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        """Fine-tune in place on ``records`` (one batched update); return the original weights."""
        records = list(records)
        if not records:
            raise ValueError(f"{self.name}: edit needs at least one record")
        kind = model_kind(model)
        weights = _edited_weights(model, self.targets)
        snapshot = {n: w.detach().clone() for n, w in weights.items()}
        batch = edit_batch(
            model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind
        )
        params = list(weights.values())
        opt = (torch.optim.Adam if self.optimizer == "adam" else torch.optim.SGD)(params, lr=self.lr)
        steps, success, loss_value, seconds = 0, False, float("nan"), 0.0
        with frozen(model), eval_mode(model):
            for p in params:
                p.requires_grad_(True)
            try:
                extra = self.locality_term(model, tokenizer, records, kind)
                done = self.until is not None and self._done()
                while True:
                    start = time.perf_counter()
                    scores = score_batch(model, batch, kind=kind)
                    success = bool(scores.exact.all())
                    loss = scores.nll.sum() / scores.n_tokens.sum().clamp(min=1)
                    if (success if self.until is None else done) or steps >= self.max_steps:
                        loss_value = float(loss.detach())
                        break
                    if extra is not None:
                        loss = loss + extra()
                    if not torch.isfinite(loss.detach()):
                        raise FloatingPointError(
                            f"{self.name}: non-finite loss {loss.detach().item()} at step {steps}"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    steps += 1
                    seconds += time.perf_counter() - start
                    done = self.until is not None and self._done()
                if not all(torch.isfinite(p.detach()).all() for p in params):
                    raise FloatingPointError(f"{self.name}: non-finite weights after {steps} steps")
            except BaseException:
                restore_weights(model, snapshot)
                raise
            finally:
                for p in params:
                    p.grad = None
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")

    def locality_term(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], kind: str
    ) -> Callable[[], Tensor] | None:
        pool = list(self.locality) if self.locality is not None else locality_examples_from(records)
        if self.locality is None:
            warnings.warn(
                "FTKLEditor has no locality examples of its own and uses those of the edited records; "
                "pass locality=locality_examples_from(train_records) for a fair drawdown",
                stacklevel=3,
            )
        if not pool or self.kl_weight == 0:
            return None
        # seeded by the edit itself, so an edit's result does not depend on the edits before it
        rng = random.Random(f"{self.seed}:" + "\n".join(f"{r.prompt}\t{r.target}" for r in records))
        chosen = rng.sample(pool, min(self.n_locality, len(pool)))
        batch = edit_batch(
            model, tokenizer, [ex.prompt for ex in chosen], [ex.answer for ex in chosen], kind=kind
        )
        with torch.no_grad():
            reference = model_logits(model, batch, kind)
        if kind == "causal":
            mask = batch["attention_mask"].bool()
        elif kind == "seq2seq":
            mask = batch["labels"] != -100
        else:
            mask = torch.ones(reference.shape[0], dtype=torch.bool, device=reference.device)

        def kl() -> Tensor:
            return self.kl_weight * kl_divergence(reference, model_logits(model, batch, kind))[mask].mean()

        return kl


@dataclass(frozen=True)
class EditorSetup:
    """What a registered editor is built from: the edited layers, the training edits (FT+KL's
    locality pool, the least-squares editors' preserved text), trained editors by name, the
    fine-tuning baselines' budget, and the model and tokenizer (for statistics of the base model).
    The locate-then-edit editors take their key statistics over ``corpus`` (an
    ``editor_nets.keystats.Corpus``; default the built-in world's), cached in ``stats_cache``."""

    targets: Sequence[str] | None = None
    train_records: Sequence[Any] = ()
    trained: Mapping[str, Any] = field(default_factory=dict)
    ft_lr: float = 1e-3
    ft_max_steps: int = 40
    model: Any = None
    tokenizer: Any = None
    corpus: Any = None
    stats_cache: str | None = None


def _trained(name: str) -> Callable[[EditorSetup], Editor]:
    def get(setup: EditorSetup) -> Editor:
        if name not in setup.trained:
            raise ValueError(f"{name} needs a trained editor (EditorSetup.trained[{name!r}])")
        return setup.trained[name]

    return get


def preserved_texts(records: Sequence[Any]) -> list[str]:
    """The prompts of ``records`` (edit prompts, rephrasings, locality): the text whose keys the
    least-squares editors keep (``C_0``)."""
    return [p for r in records for p in (r.prompt, *r.rephrases, *[x.prompt for x in r.locality])]


def _ridge(setup: EditorSetup) -> Editor:
    from editor_nets.models import output_projections
    from editor_nets.ridge import KeyMemory, RidgeEditor, preserved_moments

    if setup.model is None or not setup.train_records:
        raise ValueError("Ridge needs the model, its tokenizer and training records (for C_0)")
    targets = output_projections(setup.model)
    texts = preserved_texts(setup.train_records)
    return RidgeEditor(
        targets, memory=KeyMemory(preserved_moments(setup.model, setup.tokenizer, texts, targets))
    )


LOCATED = ("ROME", "MEMIT", "AlphaEdit", "KN")
# the locate-then-edit and memory-based editors read a causal LM's MLP keys or its prompt tokens
CAUSAL_ONLY = ("ENN", *LOCATED, "SERAC", "GRACE", "EditCache")


def _located(name: str) -> Callable[[EditorSetup], Editor]:
    """The factory of a locate-then-edit editor: key statistics of every block's MLP output matrix
    (cached), and the fact token (and ROME's layer) found by causal tracing of training edits."""

    def build(setup: EditorSetup) -> Editor:
        from editor_nets.keystats import key_statistics, read_corpus
        from editor_nets.locate import LOCATE_EDITORS, mlp_output_layers, require_causal
        from editor_nets.trace import locate_facts

        if setup.model is None or setup.tokenizer is None:
            raise ValueError(f"{name} needs the model and its tokenizer (EditorSetup.model, .tokenizer)")
        require_causal(setup.model, name)
        cls = LOCATE_EDITORS[name]
        settings: dict[str, Any] = {}
        if name != "KN":
            corpus = setup.corpus if setup.corpus is not None else read_corpus()
            layers = mlp_output_layers(setup.model)
            settings["statistics"] = key_statistics(
                setup.model, setup.tokenizer, layers, corpus, cache_dir=setup.stats_cache
            )
            if setup.train_records:
                site = locate_facts(setup.model, setup.tokenizer, setup.train_records)
                settings["fact_token"] = site.fact_token
                if name == "ROME":
                    settings["layer"] = site.layer
        return cls(**settings)

    return build


def _memory(name: str, setup: EditorSetup) -> Editor:
    """GRACE (a codebook at the last block's MLP output) or the exact-match edit cache."""
    from editor_nets.grace import EditCacheEditor, GraceEditor

    return GraceEditor() if name == "GRACE" else EditCacheEditor()


EDITORS: dict[str, Callable[[EditorSetup], Editor]] = {
    "MEND": _trained("MEND"),
    "LifelongMEND": _trained("LifelongMEND"),
    "KE": _trained("KE"),
    "ENN": _trained("ENN"),  # trained with its own copy of the model: run_job evaluates it there
    "SERAC": _trained("SERAC"),
    "Ridge": _ridge,
    "FT": lambda s: FTEditor(targets=s.targets, lr=s.ft_lr, max_steps=s.ft_max_steps),
    "FT+KL": lambda s: FTKLEditor(
        targets=s.targets,
        lr=s.ft_lr,
        max_steps=s.ft_max_steps,
        locality=locality_examples_from(s.train_records),
    ),
    **{name: _located(name) for name in LOCATED},
    "GRACE": lambda s: _memory("GRACE", s),
    "EditCache": lambda s: _memory("EditCache", s),
}


def applicable_editors(names: Sequence[str], model: nn.Module) -> tuple[list[str], dict[str, str]]:
    """``names`` split into those that apply to ``model`` and ``{name: why not}`` for the rest
    (the locate-then-edit editors on seq2seq models and classifiers), so a job over every editor
    runs the applicable ones on any family and reports what it left out."""
    from editor_nets.models import model_kind

    kind = model_kind(model)
    skipped = {n: f"edits causal language models only; this model is a {kind} model" for n in names
               if n in CAUSAL_ONLY and kind != "causal"}  # fmt: skip
    return [n for n in names if n not in skipped], skipped


def build_editors(names: Sequence[str], setup: EditorSetup) -> dict[str, Editor]:
    """``{name: editor}`` for the registered ``names``, in that order; ``KeyError`` names unknown ones."""
    unknown = [n for n in names if n not in EDITORS]
    if unknown:
        raise KeyError(f"unknown editor(s) {unknown}; known editors: {sorted(EDITORS)}")
    return {name: EDITORS[name](setup) for name in names}
