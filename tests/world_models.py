"""Helpers shared by the tests that need a model that knows something: a small GPT-2 trained
for a few seconds on the synthetic world, and parameter snapshots to check what an edit changed.

Importing this module does not import transformers (it is on the tests' path for every package).
"""

from __future__ import annotations

import dataclasses

import torch

# the MLP matrices of the last two of the three blocks of ``world_gpt2``
EDITED = [
    "transformer.h.1.mlp.c_fc",
    "transformer.h.1.mlp.c_proj",
    "transformer.h.2.mlp.c_fc",
    "transformer.h.2.mlp.c_proj",
]


def world_gpt2(seed: int = 0, *, world_seed: int | None = None, steps: int = 250, n_entities: int = 24):
    """``(model, tokenizer, world)``: a 3-block, 48-wide GPT-2 trained ``steps`` steps on the corpus of
    ``build_world(n_entities, seed=world_seed)`` (default ``seed``), in eval mode."""
    import transformers

    from edit_data import build_world, train_tokenizer

    world = build_world(n_entities=n_entities, seed=seed if world_seed is None else world_seed)
    tok = train_tokenizer(world.corpus)
    config = transformers.GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=48, n_layer=3, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2, eos_token_id=3,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config)
    enc = tok(world.corpus, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(ids), (32,), generator=g)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), tok, world


def param_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every tensor of the model's state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    """The names whose tensors are no longer bitwise those of ``state``."""
    now = model.state_dict()
    return {k for k in state if not torch.equal(now[k], state[k])}


def train_on_answers(model, tokenizer, records, *, steps: int = 300, seed: int = 0, lr: float = 3e-3):
    """Teach ``model`` (any kind: causal or seq2seq) the answers of ``records`` (each prompt and
    rephrasing -> ``original``) for ``steps`` AdamW steps on batches of 32, through the project's
    own collators (``editor_nets.scoring.edit_batch``); returns it in eval mode, frozen."""
    from editor_nets.scoring import edit_batch

    pairs = [(p, r.original) for r in records for p in (r.prompt, *r.rephrases) if r.original]
    model.train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(pairs), (32,), generator=g).tolist()
        batch = edit_batch(model, tokenizer, [pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
        batch.pop("decoder_attention_mask", None)
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval().requires_grad_(False)


@dataclasses.dataclass
class Learnt:
    model: torch.nn.Module
    tokenizer: object
    world: object
    known: list  # records whose original answer the model gives
    corpus: object  # editor_nets.keystats.Corpus of the world's sentences


def saved_world_gpt2(root, steps: int = 400):
    """A tiny GPT-2 of the model table taught the answers of the 24-entity world (seed 0), saved
    with its tokenizer to ``root / "model"`` as ``edit-train`` leaves it; returns ``(model, tokenizer, world)``."""
    from edit_data import build_world
    from tiny_models import build_tiny, world_tokenizer

    world = build_world(n_entities=24, seed=0)
    tokenizer = world_tokenizer("gpt2", world.corpus)
    model = train_on_answers(build_tiny("gpt2", tokenizer=tokenizer), tokenizer, world.records, steps=steps)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return model, tokenizer, world
