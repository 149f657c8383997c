"""Tokenising collators for the three model families.

Causal LMs: ``text = prompt + " " + target.lstrip()``; the loss is only on the target tokens
(``labels`` = ``input_ids`` there, -100 elsewhere; the model shifts internally). Truncation
never cuts the target: prompt tokens are dropped from the left; a target that cannot fit
raises :class:`TargetTooLongError` naming the example.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch

IGNORE_INDEX = -100


class TargetTooLongError(ValueError):
    """A target (plus the minimum context it needs) does not fit in ``max_length``."""


def join_prompt_target(prompt: str, target: str) -> tuple[str, int]:
    """The causal-LM text for one example and the character offset where the target starts."""
    target = target.lstrip()
    return prompt + " " + target, len(prompt) + 1


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """The token ids a causal LM sees before the answer: the prompt with the special tokens the
    tokenizer puts in front (BOS for Llama-style tokenizers), without those it appends (EOS/SEP).

    Edits (:func:`collate_causal`), evaluation and generation all encode prompts this way, so a
    model is edited on exactly the ids it is later asked with."""
    full = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    for lead in range(len(full) - len(plain) + 1):
        if full[lead : lead + len(plain)] == plain:
            return full[: lead + len(plain)]
    return full


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    raise ValueError("tokenizer has neither a pad token nor an eos token to pad with")


def _check_lengths(prompts: Sequence[str], others: Sequence[Any], name: str) -> None:
    if len(prompts) != len(others):
        raise ValueError(f"got {len(prompts)} prompts/texts but {len(others)} {name}")
    if not prompts:
        raise ValueError("cannot collate an empty batch")
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise TypeError(f"example {i}: prompt/text must be a string, got {text!r}")


def _check_targets(targets: Sequence[Any]) -> None:
    for i, target in enumerate(targets):
        if not isinstance(target, str):
            raise TypeError(f"example {i}: target must be a string, got {target!r}")


def _split_causal(tokenizer: Any, prompt: str, target: str) -> tuple[list[int], list[bool]]:
    """Token ids of prompt+target and, per token, whether it belongs to the target."""
    if not target.strip():
        raise ValueError(f"empty target for prompt {prompt!r}")
    text, start = join_prompt_target(prompt, target)
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        # A token is a target token when it covers at least one target character; special
        # tokens have empty offsets (0, 0) and never count.
        is_target = [end > start and end > begin for begin, end in enc["offset_mapping"]]
    else:  # slow tokenizers: tokenise the two parts separately
        p = encode_prompt(tokenizer, prompt)
        t = tokenizer(" " + target.lstrip(), add_special_tokens=False)["input_ids"]
        ids, is_target = list(p) + list(t), [False] * len(p) + [True] * len(t)
    if not any(is_target):
        raise ValueError(f"target {target!r} produced no tokens for prompt {prompt!r}")
    return ids, is_target


def collate_causal(
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    max_length: int | None = None,
    padding_side: str = "right",
) -> dict[str, torch.Tensor]:
    """Tokenise prompt/target pairs for a causal LM.

    Returns ``input_ids`` and ``attention_mask`` of shape [B, T] (``long``) and ``labels``
    [B, T]: the token id at target positions, -100 at prompt and padding positions. Sequences
    longer than ``max_length`` lose prompt tokens from the left, after any leading special tokens
    such as BOS (never target tokens, and at least one prompt token is kept so the first target
    token is predicted from something);
    :class:`TargetTooLongError` if even that does not fit. ``padding_side`` is ``"right"`` or
    ``"left"`` (left for batched generation).
    """
    _check_lengths(prompts, targets, "targets")
    _check_targets(targets)
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    rows: list[tuple[list[int], list[bool]]] = []
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        ids, is_target = _split_causal(tokenizer, prompt, target)
        if max_length is not None and len(ids) > max_length:
            # keep leading special tokens (BOS, CLS), drop the oldest prompt tokens after them
            special = set(tokenizer.all_special_ids)
            n_lead = next(k for k, t in enumerate(ids) if t not in special or is_target[k])
            n_target_span = len(ids) - is_target.index(True)
            if n_lead + 1 + n_target_span > max_length:
                raise TargetTooLongError(
                    f"example {i}: target {target!r} needs {n_target_span} tokens plus {n_lead + 1} "
                    f"prompt/special token(s), but max_length is {max_length}"
                )
            cut = len(ids) - max_length
            ids = ids[:n_lead] + ids[n_lead + cut :]
            is_target = is_target[:n_lead] + is_target[n_lead + cut :]
        rows.append((ids, is_target))

    width = max(len(ids) for ids, _ in rows)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, is_target) in enumerate(rows):
        n = len(ids)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[b, sl] = row
        attention_mask[b, sl] = 1
        labels[b, sl] = torch.where(torch.tensor(is_target), row, torch.tensor(IGNORE_INDEX))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_seq2seq(
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    *,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise prompt/target pairs for an encoder-decoder model (T5, BART).

    Returns ``input_ids``, ``attention_mask`` [B, T_enc] (prompt, right padded, truncated to
    ``max_length`` from the right), ``labels`` [B, T_dec] (target ids with the tokenizer's special
    tokens, -100 at padding) and ``decoder_attention_mask`` [B, T_dec]. The model builds its decoder
    inputs from ``labels``. A target longer than ``max_length`` raises :class:`TargetTooLongError`.
    """
    _check_lengths(prompts, targets, "targets")
    _check_targets(targets)
    targets = [t.strip() for t in targets]
    for i, t in enumerate(targets):
        if not t:
            raise ValueError(f"example {i}: empty target for prompt {prompts[i]!r}")
    enc = tokenizer(
        list(prompts),
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    dec = tokenizer(text_target=targets, padding=True, return_tensors="pt")
    if max_length is not None and dec["input_ids"].shape[1] > max_length:
        lengths = dec["attention_mask"].sum(1)
        i = int(lengths.argmax())
        raise TargetTooLongError(
            f"example {i}: target {targets[i]!r} is {int(lengths[i])} tokens, max_length is {max_length}"
        )
    labels = dec["input_ids"].masked_fill(dec["attention_mask"] == 0, IGNORE_INDEX)
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": labels,
        "decoder_attention_mask": dec["attention_mask"],
    }


def collate_classifier(
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    *,
    max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenise texts for sequence classification (BERT): ``input_ids``, ``attention_mask``
    [B, T] (right padded, truncated to ``max_length``) and integer ``labels`` [B]."""
    _check_lengths(texts, labels, "labels")
    for i, y in enumerate(labels):
        if isinstance(y, bool) or not isinstance(y, numbers.Integral):
            raise TypeError(f"example {i}: label must be an int class index, got {y!r}")
    enc = tokenizer(
        list(texts),
        padding=True,
        truncation=max_length is not None,
        max_length=max_length,
        return_tensors="pt",
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "labels": torch.tensor([int(y) for y in labels], dtype=torch.long),
    }
