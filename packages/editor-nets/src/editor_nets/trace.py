"""Causal tracing (Meng et al., 2022): where in a causal LM one fact is recalled.

The subject's input embeddings are corrupted with Gaussian noise (``noise`` times the standard
deviation of the embedding matrix, ``n_noise`` draws), which lowers the probability of the answer.
Then, one (token, block) at a time, the clean run's state there is put back into the corrupted runs;
how much of the answer's probability that restores is the state's indirect effect. ``"hidden"``
restores the residual stream after the block, ``"mlp"`` the block's MLP output alone.

Public API::

    causal_trace(model, tokenizer, prompt, subject, answer=None, site="hidden") -> Trace
    draw_trace(traces, path)                      # the heat maps as one PNG
    locate_facts(model, tokenizer, records) -> FactSite   # the token and block to edit
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from editor_nets.locate import _hidden, _with_hidden, block_of, mlp_output_layers, require_causal

__all__ = ["SITES", "FactSite", "Trace", "causal_trace", "draw_trace", "locate_facts"]

SITES = ("hidden", "mlp")


@dataclass
class Trace:
    """``effects`` ``[tokens, blocks]``: the answer's probability with that state restored, averaged
    over the noise draws; ``p_clean`` / ``p_corrupted`` without corruption / without restoring."""

    prompt: str
    subject: str
    answer: str
    site: str
    tokens: list[str]
    subject_tokens: tuple[int, int]  # [start, end) positions of the subject
    effects: Tensor
    p_clean: float
    p_corrupted: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "subject": self.subject, "answer": self.answer, "site": self.site,
            "tokens": self.tokens, "subject_tokens": list(self.subject_tokens),
            "effects": [[round(float(x), 6) for x in row] for row in self.effects],
            "p_clean": self.p_clean, "p_corrupted": self.p_corrupted,
        }  # fmt: skip


def _site_modules(model: nn.Module, site: str) -> list[nn.Module]:
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    layers = mlp_output_layers(model)
    names = [block_of(n) if site == "hidden" else n.rsplit(".", 1)[0] for n in layers]
    return [model.get_submodule(n) for n in names]


@torch.no_grad()
def causal_trace(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    subject: str,
    answer: str | None = None,
    *,
    site: str = "hidden",
    n_noise: int = 10,
    noise: float = 3.0,
    seed: int = 0,
) -> Trace:
    """Trace ``answer``'s first token (default: the model's own next token) for ``prompt``."""
    from edit_data import encode_prompt

    require_causal(model, "causal tracing")
    if subject not in prompt:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    modules = _site_modules(model, site)
    ids = encode_prompt(tokenizer, prompt)
    start = prompt.index(subject)
    lo = (
        len(encode_prompt(tokenizer, prompt[:start].rstrip())) if start else len(encode_prompt(tokenizer, ""))
    )
    hi = len(encode_prompt(tokenizer, prompt[: start + len(subject)]))
    device = model.get_input_embeddings().weight.device
    batch = torch.tensor([ids] * (n_noise + 1), device=device)  # row 0 stays clean
    if answer is None:
        token = int(model(input_ids=batch[:1]).logits[0, -1].argmax())
        answer = tokenizer.decode([token]).strip()
    else:
        from editor_nets.locate import first_answer_token

        token = first_answer_token(model, tokenizer, prompt, answer)[2]
    embeddings = model.get_input_embeddings()
    g = torch.Generator().manual_seed(seed)
    scale = noise * float(embeddings.weight.float().std())
    draws = torch.randn(n_noise, hi - lo, embeddings.embedding_dim, generator=g).to(device) * scale

    def corrupt(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        output = output.clone()
        output[1:, lo:hi] += draws.to(output.dtype)
        return output

    def probability() -> Tensor:
        return model(input_ids=batch).logits[:, -1].float().softmax(-1)[:, token]  # [n_noise + 1]

    clean_states: list[Tensor] = []
    record = [
        m.register_forward_hook(lambda m, a, o: clean_states.append(_hidden(o)[0].clone())) for m in modules
    ]
    try:
        p_clean = float(probability()[0])
    finally:
        for h in record:
            h.remove()
    effects = torch.zeros(len(ids), len(modules))
    handle = embeddings.register_forward_hook(corrupt)
    try:
        p_corrupted = float(probability()[1:].mean())
        for b, module in enumerate(modules):
            for t in range(len(ids)):

                def restore(m: nn.Module, a: tuple, o: Any, b: int = b, t: int = t) -> Any:
                    h = _hidden(o).clone()
                    h[1:, t] = clean_states[b][t].to(h.dtype)
                    return _with_hidden(o, h)

                hook = module.register_forward_hook(restore)
                try:
                    effects[t, b] = probability()[1:].mean().cpu()
                finally:
                    hook.remove()
    finally:
        handle.remove()
    tokens = [tokenizer.decode([i]) for i in ids]
    return Trace(prompt, subject, answer, site, tokens, (lo, hi), effects, p_clean, p_corrupted)


def draw_trace(traces: Sequence[Trace], path: str | Path) -> Path:
    """One heat map per trace (tokens down, blocks across; the subject's tokens marked with ``*``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(traces), 0.45 * max(len(t.tokens) for t in traces) + 1.8))
    for i, tr in enumerate(traces):
        ax = fig.add_subplot(1, len(traces), i + 1)
        image = ax.imshow(
            tr.effects.numpy(), cmap="Purples" if tr.site == "hidden" else "Greens", aspect="auto"
        )
        ax.set_yticks(range(len(tr.tokens)))
        ax.set_yticklabels(
            [
                f"{tok.strip() or repr(tok)}{'*' if tr.subject_tokens[0] <= j < tr.subject_tokens[1] else ''}"
                for j, tok in enumerate(tr.tokens)
            ]
        )
        ax.set_xlabel("block")
        ax.set_title(
            f"restoring {'the residual stream' if tr.site == 'hidden' else 'the MLP output'}\n"
            f"p({tr.answer!r}) clean {tr.p_clean:.2f}, corrupted {tr.p_corrupted:.2f}",
            fontsize=9,
        )
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


@dataclass(frozen=True)
class FactSite:
    """Where a model recalls facts, by causal tracing of the MLP outputs over several prompts:
    ``fact_token`` (``"subject_last"`` or ``"last"``), the MLP output matrix ``layer`` with the
    largest mean indirect effect there, and ``effects`` ``{fact_token: [per block]}``."""

    fact_token: str
    layer: str
    effects: dict[str, list[float]]


def locate_facts(
    model: nn.Module, tokenizer: Any, records: Sequence[Any], *, n_records: int = 8, min_effect: float = 0.01
) -> FactSite:
    """Trace the MLP outputs for the first ``n_records`` records with a subject (each on its own
    original answer, else the model's) and pick the token and block whose restoration brings back
    the most of the answer's probability: the site ROME and MEMIT should edit. When no site restores
    more than ``min_effect`` (a model that has not learnt these facts), the papers' default:
    the subject's last token in block ``n_blocks // 3``."""
    chosen = [r for r in records if r.subject and r.subject in r.prompt][:n_records]
    if not chosen:
        raise ValueError("locating facts needs records whose prompt contains their subject")
    layers = mlp_output_layers(model)
    sums = {"subject_last": torch.zeros(len(layers)), "last": torch.zeros(len(layers))}
    for r in chosen:
        tr = causal_trace(model, tokenizer, r.prompt, r.subject, r.original, site="mlp")
        sums["subject_last"] += tr.effects[tr.subject_tokens[1] - 1] - tr.p_corrupted
        sums["last"] += tr.effects[-1] - tr.p_corrupted
    effects = {k: (v / len(chosen)).tolist() for k, v in sums.items()}
    token, block = max(
        ((k, b) for k in effects for b in range(len(layers))), key=lambda kb: effects[kb[0]][kb[1]]
    )
    if effects[token][block] < min_effect:
        token, block = "subject_last", len(layers) // 3
    return FactSite(token, layers[block], effects)
