"""The one table of tiny model configurations that tests run across (as in PEFT's tests).

Every entry builds a randomly initialised model from a ``transformers`` config: nothing
is downloaded. ``kind`` is ``"causal"``, ``"seq2seq"`` or ``"classifier"``; ``mlp`` and
``attn`` are globs for the MLP and attention projections graddecomp must support.
Importing this module does not import transformers (graddecomp's tests also run in a
venv without it): ``build_tiny`` does, and tests call ``pytest.importorskip`` first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

VOCAB = 96


@dataclass(frozen=True)
class TinyModel:
    name: str
    kind: str  # "causal" | "seq2seq" | "classifier"
    config_class: str
    model_class: str
    config: dict[str, Any]
    mlp: tuple[str, ...]
    attn: tuple[str, ...] = field(default=())
    adds: tuple[str, ...] = ()  # what the family's own tokenizer puts around a text: "bos", "eos"


TINY_MODELS: dict[str, TinyModel] = {
    m.name: m
    for m in [
        TinyModel(
            "gpt2",
            "causal",
            "GPT2Config",
            "GPT2LMHeadModel",
            dict(
                vocab_size=VOCAB,
                n_positions=64,
                n_embd=32,
                n_layer=2,
                n_head=4,
                bos_token_id=0,
                eos_token_id=2,
            ),
            mlp=("transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj"),
            attn=("transformer.h.*.attn.c_attn", "transformer.h.*.attn.c_proj"),
        ),
        TinyModel(
            "gpt_neox",
            "causal",
            "GPTNeoXConfig",
            "GPTNeoXForCausalLM",
            dict(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=64,
            ),
            mlp=("gpt_neox.layers.*.mlp.dense_h_to_4h", "gpt_neox.layers.*.mlp.dense_4h_to_h"),
            attn=("gpt_neox.layers.*.attention.query_key_value", "gpt_neox.layers.*.attention.dense"),
        ),
        TinyModel(
            "llama",
            "causal",
            "LlamaConfig",
            "LlamaForCausalLM",
            dict(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=48,
                max_position_embeddings=64,
            ),
            mlp=(
                "model.layers.*.mlp.gate_proj",
                "model.layers.*.mlp.up_proj",
                "model.layers.*.mlp.down_proj",
            ),
            attn=("model.layers.*.self_attn.q_proj", "model.layers.*.self_attn.o_proj"),
            adds=("bos",),
        ),
        TinyModel(
            "t5",
            "seq2seq",
            "T5Config",
            "T5ForConditionalGeneration",
            dict(
                vocab_size=VOCAB,
                d_model=32,
                d_kv=8,
                d_ff=48,
                num_layers=2,
                num_decoder_layers=2,
                num_heads=4,
                feed_forward_proj="gated-gelu",
                decoder_start_token_id=0,
                pad_token_id=0,
            ),
            mlp=(
                "encoder.block.*.layer.1.DenseReluDense.wi_0",
                "encoder.block.*.layer.1.DenseReluDense.wi_1",
                "encoder.block.*.layer.1.DenseReluDense.wo",
                "decoder.block.*.layer.2.DenseReluDense.wi_0",
                "decoder.block.*.layer.2.DenseReluDense.wo",
            ),
            attn=("encoder.block.*.layer.0.SelfAttention.q", "decoder.block.*.layer.1.EncDecAttention.v"),
            adds=("eos",),
        ),
        TinyModel(
            "bart",
            "seq2seq",
            "BartConfig",
            "BartForConditionalGeneration",
            dict(
                vocab_size=VOCAB,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=48,
                decoder_ffn_dim=48,
                max_position_embeddings=64,
                pad_token_id=1,
                bos_token_id=0,
                eos_token_id=2,
                decoder_start_token_id=2,
            ),
            mlp=("model.encoder.layers.*.fc1", "model.encoder.layers.*.fc2", "model.decoder.layers.*.fc1"),
            attn=("model.encoder.layers.*.self_attn.k_proj", "model.decoder.layers.*.encoder_attn.out_proj"),
            adds=("bos", "eos"),
        ),
        TinyModel(
            "bert",
            "classifier",
            "BertConfig",
            "BertForSequenceClassification",
            dict(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=48,
                max_position_embeddings=64,
                num_labels=2,
            ),
            mlp=("bert.encoder.layer.*.intermediate.dense", "bert.encoder.layer.*.output.dense"),
            attn=("bert.encoder.layer.*.attention.self.query", "bert.encoder.layer.*.attention.output.dense"),
        ),
    ]
}


def build_tiny(name: str, *, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer=None):
    """Build the tiny model ``name`` from the table, randomly initialised with ``seed``, in eval mode.

    With ``tokenizer`` (e.g. ``world_tokenizer(name, corpus)``) the vocabulary and the special
    token ids (pad, bos, eos, the decoder's start: pad for T5, eos for BART) are the tokenizer's."""
    import transformers

    spec = TINY_MODELS[name]
    cfg = dict(spec.config)
    if tokenizer is not None:
        start = cfg.get("decoder_start_token_id")
        cfg.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if start is not None:
            pad = spec.config.get("pad_token_id")
            cfg["decoder_start_token_id"] = tokenizer.pad_token_id if start == pad else tokenizer.eos_token_id
    config = getattr(transformers, spec.config_class)(**cfg)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).to(dtype)
    return model.eval()


def world_tokenizer(name: str, corpus):
    """A word-level tokenizer of ``corpus`` that adds what family ``name``'s own tokenizer adds
    (BOS for Llama, EOS for T5, both for BART)."""
    from edit_data import train_tokenizer

    adds = TINY_MODELS[name].adds
    return train_tokenizer(corpus, add_bos="bos" in adds, add_eos="eos" in adds)


def tiny_batch(name: str, *, batch: int = 3, lengths: tuple[int, ...] = (7, 4, 5), seed: int = 0) -> dict:
    """A padded batch of unequal lengths for model ``name`` and a scalar-loss recipe.

    Causal: ``labels`` are ``-100`` on padding. Seq2seq: decoder ``labels`` of unequal
    lengths too. Classifier: one label per sequence. Padding positions of the encoder
    inputs are marked in ``attention_mask``.
    """
    spec = TINY_MODELS[name]
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    ids = torch.randint(3, VOCAB, (batch, t), generator=g)
    mask = torch.zeros(batch, t, dtype=torch.long)
    for i, n in enumerate(lengths[:batch]):
        mask[i, :n] = 1
    ids = ids * mask + (1 - mask) * 1  # pad id 1
    out = {"input_ids": ids, "attention_mask": mask}
    if spec.kind == "causal":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    elif spec.kind == "seq2seq":
        dec_lengths = [max(2, n - 2) for n in lengths[:batch]]
        labels = torch.randint(3, VOCAB, (batch, max(dec_lengths)), generator=g)
        for i, n in enumerate(dec_lengths):
            labels[i, n:] = -100
        out["labels"] = labels
    else:
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    return out
