"""Model families: which kind a model is, which layers MEND edits by default, and how an edit
example becomes a batch, a loss and answer logits for each kind.

Kinds: ``"causal"`` (GPT-2, GPT-NeoX, Llama, ...), ``"seq2seq"`` (T5, BART) and
``"classifier"`` (BERT-style sequence classification).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graddecomp import is_supported

__all__ = [
    "FAMILY_MLP_LAYERS",
    "answer_logits",
    "default_targets",
    "edit_batch",
    "generate_answer",
    "label_id",
    "model_kind",
    "target_nll",
]

# model_type -> (block patterns with "{i}", MLP layer suffixes). Seq2seq families list the
# encoder and the decoder stacks separately; the last ``n`` blocks of each stack are edited.
FAMILY_MLP_LAYERS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "gpt2": [("transformer.h.{i}", ("mlp.c_fc", "mlp.c_proj"))],
    "gpt_neox": [("gpt_neox.layers.{i}", ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"))],
    "llama": [("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))],
    "mistral": [("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))],
    "qwen2": [("model.layers.{i}", ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"))],
    "bert": [("bert.encoder.layer.{i}", ("intermediate.dense", "output.dense"))],
    "roberta": [("roberta.encoder.layer.{i}", ("intermediate.dense", "output.dense"))],
    "t5": [
        ("encoder.block.{i}", ("layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_0",
                               "layer.1.DenseReluDense.wi_1", "layer.1.DenseReluDense.wo")),
        ("decoder.block.{i}", ("layer.2.DenseReluDense.wi", "layer.2.DenseReluDense.wi_0",
                               "layer.2.DenseReluDense.wi_1", "layer.2.DenseReluDense.wo")),
    ],
    "bart": [
        ("model.encoder.layers.{i}", ("fc1", "fc2")),
        ("model.decoder.layers.{i}", ("fc1", "fc2")),
    ],
}  # fmt: skip


def model_kind(model: nn.Module) -> str:
    """``"causal"``, ``"seq2seq"`` or ``"classifier"`` from the model class; ``ValueError`` otherwise."""
    cls = type(model).__name__
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) or cls.endswith("ForConditionalGeneration"):
        return "seq2seq"
    if cls.endswith("ForSequenceClassification"):
        return "classifier"
    if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
        return "causal"
    raise ValueError(
        f"cannot tell the kind of {cls}: expected a *ForCausalLM / *LMHeadModel, a seq2seq "
        "*ForConditionalGeneration or a *ForSequenceClassification model"
    )


def default_targets(model: nn.Module, n_blocks: int | None = None) -> list[str]:
    """Default edited layers: the MLP matrices of the last 3 blocks (causal, classifier) or of
    the last 2 encoder and 2 decoder blocks (seq2seq). ``n_blocks`` overrides the count."""
    kind = model_kind(model)
    n = n_blocks if n_blocks is not None else (2 if kind == "seq2seq" else 3)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    names = {name for name, m in model.named_modules() if name and is_supported(m)}
    stacks = FAMILY_MLP_LAYERS.get(model_type)
    if stacks is None:
        return _generic_targets(model, n)
    chosen: list[str] = []
    for block, suffixes in stacks:
        regex = re.compile(re.escape(block).replace(r"\{i\}", r"(\d+)") + r"\.(.+)$")
        by_block: dict[int, list[str]] = {}
        for name in names:
            m = regex.match(name)
            if m and m.group(2) in suffixes:
                by_block.setdefault(int(m.group(1)), []).append(name)
        for i in sorted(by_block)[-n:]:
            chosen.extend(
                sorted(
                    by_block[i],
                    key=lambda s, suf=suffixes: (
                        suf.index(s.rsplit(".", 1)[-1]) if s.rsplit(".", 1)[-1] in suf else 0
                    ),
                )
            )
    if not chosen:
        raise ValueError(f"found no MLP layers for model type {model_type!r}; pass the targets explicitly")
    order = [name for name, _ in model.named_modules()]
    return sorted(chosen, key=order.index)


_MLP_WORDS = re.compile(r"(mlp|ffn|feed_forward|DenseReluDense|intermediate|fc1|fc2|experts)", re.I)
_ATTN_WORDS = re.compile(r"(attn|attention)", re.I)


def _generic_targets(model: nn.Module, n: int) -> list[str]:
    layers = [
        name
        for name, m in model.named_modules()
        if name and is_supported(m) and _MLP_WORDS.search(name) and not _ATTN_WORDS.search(name)
    ]
    blocks: list[str] = []
    for name in layers:
        m = re.match(r"(.*?\.\d+)\.", name)
        if m and m.group(1) not in blocks:
            blocks.append(m.group(1))
    if not blocks:
        raise ValueError(f"cannot find MLP layers of {type(model).__name__}; pass the targets explicitly")
    keep = set(blocks[-n:])
    return [name for name in layers if re.match(r"(.*?\.\d+)\.", name).group(1) in keep]


def label_id(model: nn.Module, target: str) -> int:
    """Class index of a classifier target: via ``config.label2id`` (e.g. ``"REFUTES"``) or an integer."""
    label2id = getattr(model.config, "label2id", None) or {}
    if target in label2id:
        return int(label2id[target])
    if target.strip().lstrip("-").isdigit():
        return int(target)
    known = {"REFUTES": 0, "SUPPORTS": 1, "NEGATIVE": 0, "POSITIVE": 1, "FALSE": 0, "TRUE": 1}
    if target.upper() in known and model.config.num_labels == 2:
        return known[target.upper()]
    raise ValueError(f"classifier target {target!r} is not a label of the model (label2id={label2id})")


def edit_batch(
    model: nn.Module, tokenizer, prompts: Sequence[str], targets: Sequence[str], *, kind: str | None = None
) -> dict[str, Tensor]:
    """Tokenise ``(prompt, target)`` pairs for the model's kind with edit_data's collators.

    Causal/seq2seq: ``input_ids``, ``attention_mask`` ``[B, T]`` and ``labels`` (``-100``
    except target tokens). Classifier: ``labels`` ``[B]`` class indices."""
    import edit_data

    kind = kind or model_kind(model)
    device = next(model.parameters()).device
    if kind == "causal":
        batch = edit_data.collate_causal(tokenizer, list(prompts), list(targets))
    elif kind == "seq2seq":
        batch = edit_data.collate_seq2seq(tokenizer, list(prompts), list(targets))
    else:
        batch = edit_data.collate_classifier(tokenizer, list(prompts), [label_id(model, t) for t in targets])
    return {k: v.to(device) for k, v in batch.items()}


def answer_logits(
    model: nn.Module, batch: dict[str, Tensor], *, kind: str | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits at the positions that predict the answer.

    Returns ``logits [N, V]``, ``labels [N]`` and ``example [N]`` (the batch row of each
    position). For classifiers ``N = B`` and ``V`` is the number of classes."""
    kind = kind or model_kind(model)
    if kind == "classifier":
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        labels = batch["labels"]
        return out.logits, labels, torch.arange(labels.shape[0], device=labels.device)
    if kind == "seq2seq":
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        logits, labels = out.logits, batch["labels"]
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    keep = labels.ne(-100)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
    return logits[keep], labels[keep], rows[keep]


def target_nll(model: nn.Module, batch: dict[str, Tensor], *, kind: str | None = None) -> Tensor:
    """Per-example mean NLL of the target tokens, ``[B]`` (``F.cross_entropy`` per example)."""
    logits, labels, rows = answer_logits(model, batch, kind=kind)
    tok = F.cross_entropy(logits.float(), labels, reduction="none")
    n = int(batch["labels"].shape[0])
    total = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, rows, tok)
    count = torch.zeros(n, dtype=tok.dtype, device=tok.device).index_add(0, rows, torch.ones_like(tok))
    return total / count.clamp_min(1)


@torch.no_grad()
def generate_answer(
    model: nn.Module, tokenizer, prompt: str, *, max_new_tokens: int = 4, kind: str | None = None
) -> str:
    """The model's greedy answer to ``prompt``: ``max_new_tokens`` tokens after the prompt (causal),
    the decoder output (seq2seq), or the predicted label name (classifier)."""
    kind = kind or model_kind(model)
    device = next(model.parameters()).device
    enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=kind != "causal").to(device)
    if kind == "classifier":
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        idx = int(logits.argmax(-1))
        id2label = getattr(model.config, "id2label", None) or {}
        return str(id2label.get(idx, idx))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    new = out[0, enc["input_ids"].shape[1] :] if kind == "causal" else out[0]
    return tokenizer.decode(new, skip_special_tokens=True).strip()
