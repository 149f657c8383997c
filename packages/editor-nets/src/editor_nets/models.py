"""Models: which kind a model is, which layers are edited by default, loading one, its answer.

Kinds: ``"causal"`` (GPT-2, GPT-NeoX, Llama, ...), ``"seq2seq"`` (T5, BART) and
``"classifier"`` (BERT-style sequence classification).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graddecomp import is_supported, resolve_targets

__all__ = [
    "DEFAULT_TARGETS",
    "auto_model_class",
    "default_targets",
    "generate_answer",
    "label_id",
    "load_model",
    "model_info",
    "model_kind",
    "output_projections",
]

# model_type -> globs of the MLP matrices, ``*`` standing for the block number. Seq2seq families
# list the encoder and the decoder stacks; the last ``n`` blocks of each stack are edited.
_LLAMA = ("model.layers.*.mlp.gate_proj", "model.layers.*.mlp.up_proj", "model.layers.*.mlp.down_proj")
_T5_FF = ("wi", "wi_0", "wi_1", "wo")
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"),
    "gpt_neox": ("gpt_neox.layers.*.mlp.dense_h_to_4h", "gpt_neox.layers.*.mlp.dense_4h_to_h"),
    "gptj": ("transformer.h.*.mlp.fc_in", "transformer.h.*.mlp.fc_out"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bert": ("bert.encoder.layer.*.intermediate.dense", "bert.encoder.layer.*.output.dense"),
    "roberta": ("roberta.encoder.layer.*.intermediate.dense", "roberta.encoder.layer.*.output.dense"),
    "t5": tuple(f"encoder.block.*.layer.1.DenseReluDense.{w}" for w in _T5_FF)
    + tuple(f"decoder.block.*.layer.2.DenseReluDense.{w}" for w in _T5_FF),
    "bart": tuple(
        f"model.{stack}.layers.*.{fc}" for stack in ("encoder", "decoder") for fc in ("fc1", "fc2")
    ),
}


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


def model_info(model: nn.Module, base_model: str = "") -> dict[str, Any]:
    """What a report says about the edited model: where it came from, its architecture (the
    ``transformers`` class), kind, number of parameters, dtype and blocks."""
    cfg = getattr(model, "config", None)
    return {
        "base_model": str(base_model),
        "architecture": type(model).__name__,
        "kind": model_kind(model),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "n_layers": getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "num_layers", None),
    }


def default_targets(model: nn.Module, n_blocks: int | None = None) -> list[str]:
    """Default edited layers: the MLP matrices of the last 3 blocks (causal, classifier) or of
    the last 2 encoder and 2 decoder blocks (seq2seq), from :data:`DEFAULT_TARGETS` (resolved by
    ``graddecomp.resolve_targets``). ``n_blocks`` overrides the count."""
    kind = model_kind(model)
    n = n_blocks if n_blocks is not None else (2 if kind == "seq2seq" else 3)
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if model_type not in DEFAULT_TARGETS:
        return _generic_targets(model, n)
    found: dict[str, tuple[str, int]] = {}  # name -> (stack, block)
    for glob in DEFAULT_TARGETS[model_type]:
        block = re.compile(re.escape(glob).replace(r"\*", r"(\d+)") + "$")
        try:
            hits = resolve_targets(model, glob)
        except KeyError:  # e.g. T5 without the gated wi_0 / wi_1
            continue
        for name in hits:
            if m := block.match(name):  # "*" must be the block number, not a longer path
                found[name] = (glob.split("*")[0], int(m.group(1)))
    blocks: dict[str, set[int]] = {}
    for stack, i in found.values():
        blocks.setdefault(stack, set()).add(i)
    last = {stack: sorted(ids)[-n:] for stack, ids in blocks.items()}
    chosen = {name for name, (stack, i) in found.items() if i in last[stack]}
    if not chosen:
        raise ValueError(f"found no MLP layers for model type {model_type!r}; pass the targets explicitly")
    return [name for name, _ in model.named_modules() if name in chosen]


def output_projections(model: nn.Module, n_blocks: int | None = None) -> list[str]:
    """The MLP output matrices among :func:`default_targets` (the ones that write into the residual
    stream: ``d_in > d_out``, e.g. GPT-2's ``c_proj``, Llama's ``down_proj``, T5's ``wo``), which the
    least-squares editors edit."""
    from graddecomp import layer_shape

    chosen = [
        n for n in default_targets(model, n_blocks) if (s := layer_shape(model.get_submodule(n)))[1] > s[0]
    ]
    if not chosen:
        raise ValueError(f"no MLP output projections among the default targets of {type(model).__name__}")
    return chosen


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


def auto_model_class(config: Any) -> Any:
    """The ``transformers`` auto class for a config: seq2seq, sequence classifier or causal LM, by
    ``is_encoder_decoder`` and the architecture it names."""
    import transformers

    arch = (getattr(config, "architectures", None) or [""])[0]
    if getattr(config, "is_encoder_decoder", False) or arch.endswith("ForConditionalGeneration"):
        return transformers.AutoModelForSeq2SeqLM
    if arch.endswith("ForSequenceClassification"):
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModelForCausalLM


def load_model(name_or_path: str | Path, *, num_gpus: int = 0) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a local directory or a hub name, with the head its architecture
    names (causal LM, seq2seq or sequence classifier), in eval mode with every parameter frozen.

    ``num_gpus`` 0 (or no CUDA at all: CPU tests of GPU settings) keeps it on the CPU; 1 puts it on
    ``cuda:0``; more split it with ``device_map="auto"`` over exactly those GPUs (more than are
    visible is a ``ValueError``), never offloading to CPU or disk (edits need
    backward through the edited layers and update weights in place), so a model that does not
    fit is a ``ValueError``, not a silent offload."""
    import transformers

    if not Path(name_or_path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(f"{name_or_path}: no such directory (and HF_HUB_OFFLINE=1 forbids downloads)")
    config = transformers.AutoConfig.from_pretrained(str(name_or_path))
    auto = auto_model_class(config)
    use_cuda = num_gpus > 0 and torch.cuda.is_available()
    if use_cuda and num_gpus > torch.cuda.device_count():
        raise ValueError(f"asked for {num_gpus} GPUs but {torch.cuda.device_count()} are visible")
    kwargs: dict[str, Any] = {}
    if use_cuda and num_gpus > 1:
        n = num_gpus
        kwargs["device_map"] = "auto"
        kwargs["max_memory"] = {i: torch.cuda.get_device_properties(i).total_memory for i in range(n)}
    model = auto.from_pretrained(str(name_or_path), **kwargs)
    placement = getattr(model, "hf_device_map", None) or {}
    if any(str(v) in ("cpu", "disk") for v in placement.values()):
        raise ValueError(f"{name_or_path} does not fit on {num_gpus} GPU(s) without offload: {placement}")
    if use_cuda and "device_map" not in kwargs:
        model = model.to("cuda:0")
    model.eval().requires_grad_(False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(name_or_path))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@torch.no_grad()
def generate_answer(
    model: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int = 4, kind: str | None = None
) -> str:
    """The model's greedy answer to ``prompt``: ``max_new_tokens`` tokens after the prompt (causal,
    whose prompt is encoded by ``edit_data.encode_prompt`` exactly as edits see it), the decoder
    output (seq2seq), or the predicted label name (classifier)."""
    from edit_data import encode_prompt

    kind = kind or model_kind(model)
    device = model.get_input_embeddings().weight.device
    if kind == "causal":
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        enc = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        enc = tokenizer([prompt], return_tensors="pt").to(device)
    if kind == "classifier":
        idx = int(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1))
        return str((getattr(model.config, "id2label", None) or {}).get(idx, idx))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    new = out[0, enc["input_ids"].shape[1] :] if kind == "causal" else out[0]
    return tokenizer.decode(new, skip_special_tokens=True).strip()
