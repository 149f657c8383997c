"""Scoring a target: the one place that turns ``(prompt, target)`` pairs into a batch, logits at
the answer positions, per-example NLL, exact match, token accuracy and KL.

Training, evaluation, pre-training, the baselines and the sidecar all score through here, so
"the edit succeeded" means the same thing everywhere: teacher-forced, the argmax at every
target position is the target token (for a classifier: the predicted class is the target label).

Kinds (``editor_nets.models.model_kind``) and their batches (``edit_batch``, via edit_data's
collators): ``causal`` and ``seq2seq`` give ``input_ids``, ``attention_mask`` and ``labels``
``[B, T]`` (``-100`` off the target tokens); ``classifier`` gives ``labels`` ``[B]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from editor_nets.models import label_id, model_kind

__all__ = [
    "AnswerLogits",
    "TargetScores",
    "answer_logits",
    "edit_batch",
    "kl_divergence",
    "model_logits",
    "score_batch",
    "score_targets",
    "target_nll",
]


def edit_batch(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    kind: str | None = None,
) -> dict[str, Tensor]:
    """Tokenise ``(prompt, target)`` pairs for the model's kind with edit_data's collators, on the
    device of the model's input embeddings."""
    import edit_data

    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    kind = kind or model_kind(model)
    if kind == "causal":
        batch = edit_data.collate_causal(tokenizer, list(prompts), list(targets))
    elif kind == "seq2seq":
        batch = edit_data.collate_seq2seq(tokenizer, list(prompts), list(targets))
    else:
        batch = edit_data.collate_classifier(tokenizer, list(prompts), [label_id(model, t) for t in targets])
    device = model.get_input_embeddings().weight.device
    return {k: v.to(device) for k, v in batch.items()}


def model_logits(model: nn.Module, batch: Mapping[str, Tensor], kind: str) -> Tensor:
    """Logits of an ``edit_batch``: ``[B, T, V]`` for causal (position ``t`` predicts token ``t + 1``)
    and seq2seq (aligned with ``labels``), ``[B, C]`` for classifiers."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if kind == "seq2seq":
        inputs["labels"] = batch["labels"]  # the model shifts them into decoder inputs
    return model(**inputs).logits


class AnswerLogits(NamedTuple):
    """The logits that predict target tokens: ``logits [N, V]``, ``labels [N]`` and ``rows [N]``
    (the batch row of each). For classifiers ``N = B`` and ``V`` is the number of classes."""

    logits: Tensor
    labels: Tensor
    rows: Tensor


def answer_logits(model: nn.Module, batch: Mapping[str, Tensor], *, kind: str | None = None) -> AnswerLogits:
    """Run the model on ``batch`` and keep the logits at the answer positions."""
    kind = kind or model_kind(model)
    logits, labels = model_logits(model, batch, kind), batch["labels"]
    if kind == "classifier":
        return AnswerLogits(logits, labels, torch.arange(labels.shape[0], device=labels.device))
    if kind == "causal":
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels.ne(-100)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    return AnswerLogits(logits[keep], labels[keep], rows[keep])


@dataclass
class TargetScores:
    """Teacher-forced scores of ``B`` (prompt, target) pairs; every tensor is ``[B]``.

    ``correct`` (long) counts target tokens whose argmax is right, ``n_tokens`` (long) the target
    tokens, ``nll`` (float) sums their negative log-likelihood; it carries gradients when the
    scores were computed with them."""

    correct: Tensor
    n_tokens: Tensor
    nll: Tensor

    @property
    def exact(self) -> Tensor:
        """``[B]`` bool: every target token predicted (the target is hit)."""
        return (self.correct == self.n_tokens) & (self.n_tokens > 0)

    @property
    def token_acc(self) -> Tensor:
        """``[B]`` float64: fraction of target tokens predicted."""
        return self.correct.double() / self.n_tokens.clamp(min=1).double()

    @property
    def mean_nll(self) -> Tensor:
        """``[B]``: each example's NLL per target token."""
        return self.nll / self.n_tokens.clamp(min=1)

    def __len__(self) -> int:
        return len(self.correct)

    @classmethod
    def of(cls, answers: AnswerLogits, n: int) -> TargetScores:
        """Sum the per-token scores of ``answers`` into their ``n`` rows."""
        logits, labels, rows = answers
        tok_nll = F.cross_entropy(logits.float(), labels, reduction="none")
        hit = (logits.detach().argmax(-1) == labels).long()
        zeros = torch.zeros(n, dtype=torch.long, device=labels.device)
        return cls(
            correct=zeros.index_add(0, rows, hit),
            n_tokens=zeros.index_add(0, rows, torch.ones_like(hit)),
            nll=tok_nll.new_zeros(n).index_add(0, rows, tok_nll),
        )

    @classmethod
    def cat(cls, parts: Sequence[TargetScores]) -> TargetScores:
        """Concatenate the rows of several scores (none: zero rows)."""
        if not parts:
            empty = torch.zeros(0, dtype=torch.long)
            return cls(empty, empty.clone(), torch.zeros(0))
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("correct", "n_tokens", "nll")))

    def cpu(self) -> TargetScores:
        return TargetScores(self.correct.cpu(), self.n_tokens.cpu(), self.nll.detach().cpu())


def score_batch(model: nn.Module, batch: Mapping[str, Tensor], *, kind: str | None = None) -> TargetScores:
    """The :class:`TargetScores` of an ``edit_batch`` (differentiable ``nll`` under autograd)."""
    return TargetScores.of(answer_logits(model, batch, kind=kind), int(batch["labels"].shape[0]))


def target_nll(model: nn.Module, batch: Mapping[str, Tensor], *, kind: str | None = None) -> Tensor:
    """Per-example mean NLL of the target tokens, ``[B]``."""
    return score_batch(model, batch, kind=kind).mean_nll


@torch.no_grad()
def score_targets(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    kind: str | None = None,
    batch_size: int = 32,
) -> TargetScores:
    """Scores of each target given its prompt, in batches of ``batch_size``, on the CPU."""
    kind = kind or model_kind(model)
    parts = [
        score_batch(
            model,
            edit_batch(model, tokenizer, prompts[i : i + batch_size], targets[i : i + batch_size], kind=kind),
            kind=kind,
        ).cpu()
        for i in range(0, len(prompts), batch_size)
    ]
    return TargetScores.cat(parts)


def kl_divergence(ref_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(ref_logits) || softmax(logits))`` over the last dimension, shape ``[...]``."""
    return F.kl_div(
        F.log_softmax(logits.float(), -1),
        F.log_softmax(ref_logits.float(), -1),
        reduction="none",
        log_target=True,
    ).sum(-1)
