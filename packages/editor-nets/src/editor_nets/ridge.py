"""Edits as regularised least squares, protecting earlier edits and preserved knowledge.

For one edited layer, an edit's keys ``U`` ``[n, d_in]`` (the layer inputs at its tokens) and
value changes ``D`` ``[n, d_out]`` (how each token's layer output should move) give the update

    dW = D^T U (U^T U + P + lam I)^-1                                   [d_out, d_in]

the minimiser of ``||dW U^T - D^T||^2 + tr(dW P dW^T) + lam ||dW||^2``. The protection ``P`` is
``beta * K_e^T K_e`` over the keys of the earlier edits (their outputs stay: ``dW K_e^T ~ 0``,
AlphaEdit; ``beta`` > 1 holds them more firmly than the new edit's own keys) plus ``gamma * C_0``, ``C_0`` the mean ``k k^T`` over preserved text (ordinary inputs keep their
outputs, MEMIT). The update has rank at most ``n`` and is stored as factors: ``u = U A^-1``,
``delta = -D``, ``alpha = 1`` (``A`` is symmetric), with the keys kept beside them.

``KeyMemory`` is that protection as explicit data: ``C_0`` per layer and the keys' second moment
of the edits made so far. It is rebuilt from the active edits' stored keys (``KeyMemory.of``), so
after a rollback the protection is exactly that of the edits that remain.

Neighbour protection: an edit's new target spills most onto the same question asked of other
subjects. ``neighbour_prompts`` asks an edit's prompt of other subjects (those the training edits
asked with the same template, from ``subject_templates``), and ``KeyMemory.holding`` adds the
mean ``k k^T`` of their keys to the protection of that one edit. ``layer_inputs`` gives those keys;
``held_rows`` turns them into a few rows with the same second moment, which an edit can carry
beside its own keys so that later edits (and a memory rebuilt after a rollback) hold them too.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from editor_nets.delta import EditDelta, LayerDelta, applied, apply_delta
from editor_nets.models import model_kind, output_projections
from editor_nets.scoring import TargetScores, edit_batch, score_batch, score_targets
from editor_nets.state import WeightSnapshot, restoring
from graddecomp import Factors, resolve_targets

__all__ = [
    "KeyMemory",
    "RidgeEditor",
    "RidgeSystem",
    "broken_answers",
    "held_rows",
    "layer_inputs",
    "neighbour_prompts",
    "preserved_moments",
    "ridge_update",
    "scores_with",
    "subject_templates",
]

SUBJECT = "{subject}"  # where the subject stands in a template


@torch.no_grad()
def _layer_inputs(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[str],
    batch_size: int,
    progress: bool,
) -> Iterator[dict[str, Tensor]]:
    """Per batch of ``texts``, each layer's inputs ``[tokens, d_in]`` (float32) at every real token
    (tokenised like prompts, padding left out).

    Encoder-decoder models read each text twice: as the encoder's input and, shifted right after
    the decoder's start token, as the decoder's input (teacher forcing on the same text), so decoder
    layers see ordinary decoder inputs too."""
    from edit_data import encode_prompt

    modules = resolve_targets(model, list(layers))
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    in_decoder = {id(m) for m in model.get_decoder().modules()} if seq2seq else set()
    found: dict[str, Tensor] = {}
    mask_now: dict[str, Tensor] = {}

    def hook(name: str, side: str):
        def record(module: nn.Module, args: tuple, output: Tensor) -> None:
            found[name] = args[0][mask_now[side]].float()

        return record

    handles = [
        m.register_forward_hook(hook(n, "decoder" if id(m) in in_decoder else "encoder"))
        for n, m in modules.items()
    ]
    device = model.get_input_embeddings().weight.device
    try:
        for i in tqdm(
            range(0, len(texts), batch_size), desc="key statistics", unit="batch", disable=not progress
        ):
            rows = [encode_prompt(tokenizer, t) for t in texts[i : i + batch_size]]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for b, r in enumerate(rows):
                ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), True
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.long().to(device)}
            mask_now["encoder"] = mask.to(device)
            if seq2seq:
                start = torch.full((len(rows), 1), model.config.decoder_start_token_id, dtype=torch.long)
                inputs["decoder_input_ids"] = torch.cat([start, ids[:, :-1]], 1).to(device)
                # the same number of real positions per row: the start token and all but the last
                mask_now["decoder"] = torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], 1).to(device)
                inputs["decoder_attention_mask"] = mask_now["decoder"].long()
            model(**inputs)
            yield dict(found)
    finally:
        for h in handles:
            h.remove()


def preserved_moments(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Tensor]:
    """``C_0`` per layer: the mean ``k k^T`` ``[d_in, d_in]`` (float32, on the layer's device) of the
    layer's inputs over every real token of ``texts`` (see ``layer_inputs``; encoder-decoder models
    count the encoder's tokens)."""
    sums: dict[str, Tensor] = {}
    count = 0
    for batch in _layer_inputs(model, tokenizer, texts, layers, batch_size, progress):
        for name, x in batch.items():
            sums[name] = sums[name] + x.T @ x if name in sums else x.T @ x
        count += len(next(iter(batch.values()))) if batch else 0
    return {n: s / max(1, count) for n, s in sums.items()}


def layer_inputs(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], layers: Sequence[str], *, batch_size: int = 32
) -> dict[str, Tensor]:
    """Each layer's inputs ``[tokens, d_in]`` (float32) at every real token of ``texts``, in order."""
    parts: dict[str, list[Tensor]] = {}
    for batch in _layer_inputs(model, tokenizer, texts, layers, batch_size, False):
        for name, x in batch.items():
            parts.setdefault(name, []).append(x)
    return {n: torch.cat(xs) for n, xs in parts.items()}


def held_rows(keys: Tensor, weight: float, tol: float = 1e-10) -> Tensor:
    """Rows ``H`` ``[r, d_in]`` with ``H^T H = weight * mean(k k^T)`` over ``keys`` ``[m, d_in]`` (to
    float rounding), ``r`` the keys' rank: prompts that share a template share the keys of the
    tokens before the subject, so ``r`` is well below ``m``. Computed through ``K K^T`` or
    ``K^T K``, whichever is smaller (a batch of edits holds many keys). Only directions whose share of the
    largest eigenvalue of ``K K^T`` is below ``tol`` are left out; the weak ones must stay, since
    they are where an edit's subject-specific change lives."""
    k = keys.double()
    scale = math.sqrt(weight / len(k))
    if len(k) <= k.shape[1]:  # through K K^T [m, m]: rows v^T K
        eigvals, eigvecs = torch.linalg.eigh(k @ k.T)  # ascending
        kept = eigvals > tol * eigvals[-1].clamp(min=1e-300)
        return (scale * eigvecs[:, kept].T @ k).float()
    eigvals, eigvecs = torch.linalg.eigh(k.T @ k)  # through K^T K [d_in, d_in]: rows sqrt(l) v^T
    kept = eigvals > tol * eigvals[-1].clamp(min=1e-300)
    return (scale * eigvals[kept].sqrt()[:, None] * eigvecs[:, kept].T).float()


@dataclass
class KeyMemory:
    """What a least-squares edit protects, per layer: ``preserved`` ``C_0`` ``[d_in, d_in]`` and
    ``edits``, the summed ``k k^T`` of the earlier edits' keys; ``n_edits`` counts those edits and
    ``answers`` holds their ``(prompt, target)`` pairs (from each delta's ``provenance["records"]``),
    which an editor with repair keeps answering."""

    preserved: dict[str, Tensor] = field(default_factory=dict)
    edits: dict[str, Tensor] = field(default_factory=dict)
    n_edits: int = 0
    answers: tuple[tuple[str, str], ...] = ()

    def with_edit(self, delta: EditDelta) -> KeyMemory:
        """This memory plus the keys and answers of ``delta`` (a new object; this one is unchanged)."""
        keys = {n: x.keys.detach().float() for n, x in delta.layers.items() if x.keys is not None}
        made = json.loads(delta.provenance.get("records", "[]"))
        answers = self.answers + tuple((r["prompt"], r["target"]) for r in made)
        held = self.holding({n: k.T @ k for n, k in keys.items()}, 1.0)
        return replace(held, n_edits=self.n_edits + 1, answers=answers)

    def holding(self, moments: Mapping[str, Tensor], weight: float) -> KeyMemory:
        """This memory with ``weight * moments`` (per layer ``[d_in, d_in]``, e.g. the neighbour
        prompts' ``preserved_moments``) added to the earlier edits' keys, for one edit's solve
        (a new object; counts and answers unchanged)."""
        edits = dict(self.edits)
        for name, m in moments.items():
            edits[name] = edits[name] + weight * m if name in edits else weight * m
        return replace(self, edits=edits)

    def fresh(self) -> KeyMemory:
        """No earlier edits; the preserved statistics stay."""
        return KeyMemory(self.preserved)

    @classmethod
    def of(cls, deltas: Iterable[EditDelta], preserved: dict[str, Tensor] | None = None) -> KeyMemory:
        """The memory after ``deltas``, in order, from their stored keys."""
        memory = cls(dict(preserved or {}))
        for delta in deltas:
            memory = memory.with_edit(delta)
        return memory

    def prior(
        self, name: str, gamma: Tensor | float, device: torch.device, beta: Tensor | float = 1.0
    ) -> Tensor | None:
        """``P = beta * edits + gamma * C_0`` for one layer (``None`` when the memory holds nothing
        for it); ``beta`` weighs the earlier edits' keys against the new edit's own."""
        parts = []
        if name in self.edits:
            parts.append(beta * self.edits[name].to(device))
        if name in self.preserved:
            parts.append(gamma * self.preserved[name].to(device))
        return sum(parts[1:], parts[0]) if parts else None


def _template(prompt: str, subject: str | None) -> str | None:
    """``prompt`` with its ``subject`` replaced by ``SUBJECT`` (``None`` when it does not name it)."""
    if not subject or subject not in prompt:
        return None
    return prompt.replace(subject, SUBJECT)


def subject_templates(records: Iterable[Any]) -> dict[str, list[str]]:
    """Template -> the subjects asked with it, over the prompts and rephrasings of ``records``
    (records without a subject in a prompt add nothing); sorted, so the result is deterministic."""
    out: dict[str, set[str]] = {}
    for r in records:
        for p in (r.prompt, *r.rephrases):
            t = _template(p, r.subject)
            if t is not None:
                out.setdefault(t, set()).add(r.subject)
    return {t: sorted(s) for t, s in sorted(out.items())}


def neighbour_prompts(records: Sequence[Any], templates: Mapping[str, Sequence[str]], k: int) -> list[str]:
    """Each record's prompt asked of up to ``k`` other subjects: those ``templates`` lists for its
    template, or every subject it lists when the template is new. Drawn with a generator seeded by
    the prompt, so the same edit gets the same neighbours. Records whose subject is unknown or not
    in the prompt get none."""
    everyone = sorted({s for names in templates.values() for s in names})
    out = []
    for r in records:
        t = _template(r.prompt, getattr(r, "subject", None))
        if t is None or k <= 0:
            continue
        pool = [s for s in templates.get(t) or everyone if s != r.subject]
        rng = random.Random(zlib.crc32(r.prompt.encode()))
        out += [t.replace(SUBJECT, s) for s in rng.sample(pool, min(k, len(pool)))]
    return out


@dataclass(frozen=True)
class RidgeSystem:
    """``B = P + lam I`` of one layer, LU-factored once, for the many solves of a stepwise edit:
    each step's :meth:`update` equals :func:`ridge_update` (to float32 rounding) at the cost of an
    ``[n, n]`` solve instead of a ``[d_in, d_in]`` one. float64 and LU rather than Cholesky: with a
    strong prior ``B`` is ill-conditioned (cond ~ 1e7) and a float32 ``P`` may round to slightly
    indefinite."""

    lu: Tensor  # [d_in, d_in], torch.linalg.lu_factor of B
    pivots: Tensor  # [d_in]

    @classmethod
    def of(cls, prior: Tensor | None, ridge: Tensor | float, d_in: int, device: torch.device) -> RidgeSystem:
        eye = torch.eye(d_in, dtype=torch.float64, device=device)
        b = ridge * eye if prior is None else prior.double() + ridge * eye
        return cls(*torch.linalg.lu_factor(b))

    def update(self, keys: Tensor, values: Tensor) -> LayerDelta:
        """The update for ``keys`` ``U [n, d_in]`` and ``values`` ``D [n, d_out]`` as factors, with
        ``U (U^T U + B)^-1 = M^-1 U B^-1`` (Woodbury; ``M = I + U B^-1 U^T`` is only ``[n, n]``)."""
        u = keys.double()
        b_inv_ut = torch.linalg.lu_solve(self.lu, self.pivots, u.T)  # B^-1 U^T, [d_in, n]
        m = torch.eye(u.shape[0], dtype=u.dtype, device=u.device) + u @ b_inv_ut
        u_solved = torch.linalg.solve(m, b_inv_ut.T).float()  # U A^-1 (A, M symmetric), [n, d_in]
        return LayerDelta(u_solved, -values.float(), 1.0, keys.detach())


def ridge_update(keys: Tensor, values: Tensor, prior: Tensor | None, ridge: Tensor | float) -> LayerDelta:
    """The least-squares update of one layer as factors: ``keys`` ``U [n, d_in]``, ``values``
    ``D [n, d_out]``, ``prior`` ``P [d_in, d_in]`` or ``None``, ``ridge`` ``lam`` (a tensor to learn it).
    Differentiable in ``values``, ``prior`` and ``ridge``: meta-training back-propagates through
    this one direct solve (cheaper to differentiate than :class:`RidgeSystem`'s factorisation,
    which serves the many solves of one edit)."""
    u = keys.double()  # float64: with a strong prior the system is ill-conditioned (cond ~ 1e7)
    d_in = u.shape[1]
    a = u.T @ u + ridge * torch.eye(d_in, dtype=u.dtype, device=u.device)
    if prior is not None:
        a = a + prior.double()
    u_solved = torch.linalg.solve(a, u.T).T.float()  # U A^-1, [n, d_in]
    return LayerDelta(u_solved, -values.float(), 1.0, keys.detach())


def stepwise_edit(
    model: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    targets: Sequence[str],
    step: Callable[[dict[str, Factors]], EditDelta],
    max_steps: int,
    provenance: dict[str, str],
    stop_nll: float | None = None,
) -> EditDelta:
    """An edit made in small steps: capture the factors of the edit loss on the model as updated so
    far, take ``step(factors)``, until every target of ``records`` is hit (teacher-forced) with,
    when ``stop_nll`` is given, each target's mean token NLL below it, or after ``max_steps``. A
    record that is done stops pushing: its loss (and so its rows) is left out of the later steps,
    so a batch's easy edits are not driven on by its hard ones. When the steps run out first, the
    edit is the first steps up to the best point seen (most targets hit, then the lowest summed
    NLL), so a margin that cannot be reached never leaves a target missed that an earlier step hit.
    Returns the steps as one ``EditDelta`` whose keys are those of the first step (the edit as
    first seen, which later edits protect); the model is unchanged afterwards."""
    from editor_nets.mend import edit_factors

    kind = model_kind(model)
    batch = edit_batch(model, tokenizer, [r.prompt for r in records], [r.target for r in records], kind=kind)
    steps: list[EditDelta] = []
    best, n_best = (-1, -math.inf), 0  # (targets hit, -summed NLL) of the best prefix, its length
    with restoring(model) as keep:
        while True:
            with torch.no_grad():
                scores = score_batch(model, batch, kind=kind)
            done = scores.exact if stop_nll is None else scores.exact & (scores.mean_nll < stop_nll)
            rank = (int(scores.exact.sum()), -float(scores.mean_nll.sum()))
            if steps and rank > best:
                best, n_best = rank, len(steps)
            if bool(done.all()) or len(steps) >= max_steps:
                break
            pushing = None if not bool(done.any()) else (~done).float()
            steps.append(step(edit_factors(model, batch, targets, kind=kind, weights=pushing)))
            keep(apply_delta(model, steps[-1]))
    if steps and not bool(done.all()):
        steps = steps[:n_best]
    delta = EditDelta.combine(steps, provenance)
    for n, layer in delta.layers.items():
        layer.keys = steps[0].layers[n].keys
    return delta


@torch.no_grad()
def broken_answers(
    model: nn.Module, tokenizer: Any, delta: EditDelta, answers: Sequence[tuple[str, str]]
) -> list[int]:
    """The indices of ``answers`` (``(prompt, target)`` pairs) that ``model`` gives now (teacher-forced
    exact match) and would no longer give with ``delta`` applied; the model is unchanged.

    Scored with ``delta`` first, then without it only where that missed: most answers still hold,
    so this costs about one pass over ``answers`` instead of two (the pass grows with every edit a
    lifelong editor makes)."""
    if not answers:
        return []
    prompts, targets = [p for p, _ in answers], [t for _, t in answers]
    missed = torch.nonzero(~scores_with(model, tokenizer, prompts, targets, delta).exact).flatten().tolist()
    if not missed:
        return []
    before = scores_with(model, tokenizer, [prompts[i] for i in missed], [targets[i] for i in missed]).exact
    return [i for i, held in zip(missed, before.tolist(), strict=True) if held]


def scores_with(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    delta: EditDelta | None = None,
    **options: Any,
) -> TargetScores:
    """``score_targets`` of ``targets`` after ``prompts`` (``options``: its ``kind``, ``batch_size``),
    with ``delta`` applied for the call when given; the model is unchanged."""
    with applied(model, *([delta] if delta is not None else [])):
        return score_targets(model, tokenizer, prompts, targets, **options)


@dataclass
class RidgeEditor:
    """The training-free least-squares editor (in the spirit of UltraEdit): in every edited layer a
    gradient step in output space, ``D = -lr * dL/dy`` at the edit's tokens, solved onto the
    weights with :func:`ridge_update` against the memory, repeated on the updated model until every
    target is hit (at most ``max_steps`` times). The steps of one edit are one ``EditDelta``.

    ``memory`` holds ``C_0`` (give ``preserved``) and the keys of the edits made since ``start()``;
    ``edit`` adds each edit's keys, ``start()`` forgets them (a fresh sequence on base weights).
    ``targets`` default to the MLP output projections (``editor_nets.models.output_projections``).
    The defaults (a small step ``lr`` repeated, a strong ``gamma``) were chosen on the validation
    edits of the built-in world: larger steps overshoot when several layers move at once."""

    targets: Sequence[str] | None = None
    lr: float = 0.25
    ridge: float = 1e-2
    gamma: float = 3000.0
    max_steps: int = 40
    memory: KeyMemory = field(default_factory=KeyMemory)
    name: str = "Ridge"

    def start(self) -> None:
        self.memory = self.memory.fresh()

    def compute_delta(
        self, model: nn.Module, tokenizer: Any, records: Sequence[Any], memory: KeyMemory | None = None
    ) -> EditDelta:
        """The edit of ``records`` (together) against ``memory`` (default ``self.memory``); the model
        is unchanged afterwards."""

        memory = self.memory if memory is None else memory
        targets = list(
            resolve_targets(
                model, list(self.targets) if self.targets is not None else output_projections(model)
            )
        )

        systems: dict[str, RidgeSystem] = {}  # the memory is fixed during one edit: factor it once

        def step(factors: dict[str, Any]) -> EditDelta:
            for n, (u, _) in factors.items():
                if n not in systems:
                    systems[n] = RidgeSystem.of(memory.prior(n, self.gamma, u.device), self.ridge, u.shape[1], u.device)  # fmt: skip
            return EditDelta({n: systems[n].update(u, -self.lr * d) for n, (u, d) in factors.items()})

        return stepwise_edit(model, tokenizer, records, targets, step, self.max_steps, {"editor": self.name})

    def edit(self, model: nn.Module, tokenizer: Any, records: Sequence[Any]) -> WeightSnapshot:
        delta = self.compute_delta(model, tokenizer, records)
        snapshot = apply_delta(model, delta)
        self.memory = self.memory.with_edit(delta)
        return snapshot
