"""Pre-train a small GPT-2 (or Llama) from scratch on the synthetic world's corpus until it knows the facts.

Everything is offline: the model is built from a ``GPT2Config`` (or a ``LlamaConfig``: RMSNorm,
rotary positions, gated MLP, grouped-query attention) and trained on the corpus
lines (``"<question> <answer>"`` and statements). Training stops early once greedy accuracy
on the fact questions reaches ``target_accuracy`` (``None``: always run ``max_steps``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from editor_nets.scoring import score_targets
from editor_nets.state import eval_mode

__all__ = ["PretrainConfig", "build_model", "pretrain_causal_lm", "qa_accuracy"]


ARCHITECTURES = ("gpt2", "llama")


@dataclass
class PretrainConfig:
    """Architecture, size and schedule of the from-scratch model (``n_embd`` wide, ``n_layer`` blocks).

    ``architecture`` is ``"gpt2"`` or ``"llama"``; a Llama has ``n_kv_head`` key/value heads
    (grouped-query attention when fewer than ``n_head``) and its tokenizer should add BOS
    (``train_tokenizer(add_bos=True)``), as Llama's own does."""

    architecture: str = "gpt2"
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_inner: int | None = None  # MLP width; None = 4 * n_embd (GPT-2), 8/3 * n_embd rounded up to 8 (Llama)
    n_kv_head: int | None = None  # Llama only; None = n_head
    n_positions: int = 32
    max_steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    warmup: int = 100
    eval_every: int = 250
    target_accuracy: float | None = 0.99
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise ValueError(f"n_head={self.n_head} is not a multiple of n_kv_head={kv}")


def qa_accuracy(
    model: nn.Module, tokenizer, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 256
) -> float:
    """Share of prompts whose answer the model produces exactly (teacher-forced argmax on every
    answer token, which equals greedy decoding of the answer; for a classifier, the predicted
    label). Any kind of model (``editor_nets.scoring``)."""
    if not prompts:
        return 0.0
    with eval_mode(model):
        hits = score_targets(model, tokenizer, prompts, answers, batch_size=batch_size).exact
    return float(hits.float().mean()) if len(hits) else 0.0


def build_model(config: PretrainConfig, tokenizer, n_positions: int) -> nn.Module:
    """A randomly initialised causal LM of ``config.architecture`` for ``tokenizer``'s vocabulary."""
    import transformers

    common = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if config.architecture == "gpt2":
        gpt2 = transformers.GPT2Config(
            n_positions=n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
            n_inner=config.n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(gpt2)
    if config.architecture == "llama":
        mlp = config.n_inner or -(-config.n_embd // 3) * 8  # 8/3 of the width, rounded up to 8
        llama = transformers.LlamaConfig(
            hidden_size=config.n_embd, num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
            num_key_value_heads=config.n_kv_head or config.n_head, intermediate_size=mlp,
            max_position_embeddings=n_positions, **common,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(llama)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {config.architecture!r}")


def pretrain_causal_lm(
    corpus: Sequence[str],
    tokenizer,
    config: PretrainConfig,
    *,
    eval_prompts: Sequence[str] = (),
    eval_answers: Sequence[str] = (),
    log=None,
) -> tuple[nn.Module, dict]:
    """Train a GPT-2 (or a Llama, ``config.architecture``) on ``corpus`` lines; returns
    ``(model in eval mode, summary)``. Lines are encoded with the tokenizer's special tokens (BOS
    for a Llama-style tokenizer), as edits and evaluation encode prompts.

    ``summary`` has ``architecture``, ``steps``, ``final_loss``, ``qa_accuracy`` (on
    ``eval_prompts``) and ``seconds``. ``log`` (optional) is called with one dict per evaluation."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    enc = tokenizer(list(corpus), add_special_tokens=True)["input_ids"]
    # the context holds two of the longest corpus line when that is longer than n_positions: SERAC's
    # counterfactual model reads an edit in front of each query (synthetic world: 10 tokens, 32 kept;
    # ISO 3166: 20 tokens, so 42, where 21 left SERAC's inputs past the position table)
    n_positions = max(config.n_positions, 2 * (max((len(ids) for ids in enc), default=1) + 1))
    model = build_model(config, tokenizer, n_positions)
    pad = tokenizer.pad_token_id
    opt = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.98)
    )

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < config.warmup:
            return (step + 1) / config.warmup
        frac = (step - config.warmup) / max(1, config.max_steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = LambdaLR(opt, lr_factor)

    order: list[int] = []
    t0 = time.perf_counter()
    acc, loss_ema, step = 0.0, float("nan"), 0
    model.train()
    bar = tqdm(
        range(config.max_steps), desc=f"pre-train {config.architecture}", unit="step", dynamic_ncols=True
    )
    for step in bar:
        if len(order) < config.batch_size:
            extra = list(range(len(enc)))
            rng.shuffle(extra)
            order += extra
        idx, order = order[: config.batch_size], order[config.batch_size :]
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, i in enumerate(idx):
            ids[b, : len(enc[i])] = torch.tensor(enc[i])
            mask[b, : len(enc[i])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = float(loss.detach())
        loss_ema = loss_val if math.isnan(loss_ema) else 0.95 * loss_ema + 0.05 * loss_val
        bar.set_postfix(loss=f"{loss_ema:.3f}", qa_acc=f"{acc:.3f}")
        if eval_prompts and ((step + 1) % config.eval_every == 0 or step + 1 == config.max_steps):
            acc = qa_accuracy(model, tokenizer, eval_prompts, eval_answers)
            bar.set_postfix(loss=f"{loss_ema:.3f}", qa_acc=f"{acc:.3f}")
            if log is not None:
                log({"phase": "pretrain", "step": step + 1, "loss": loss_ema, "qa_accuracy": acc})
            if config.target_accuracy is not None and acc >= config.target_accuracy:
                break
    bar.close()
    model.eval()
    if eval_prompts:
        acc = qa_accuracy(model, tokenizer, eval_prompts, eval_answers)
    summary = {
        "architecture": type(model).__name__,
        "steps": step + 1,
        "final_loss": loss_ema,
        "qa_accuracy": acc,
        "seconds": time.perf_counter() - t0,
        "n_parameters": sum(p.numel() for p in model.parameters()),
    }
    return model, summary
